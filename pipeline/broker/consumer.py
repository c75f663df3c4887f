"""Consumers: how a Dramatiq worker pulls messages from a JetStream consumer.

Dramatiq calls ``__next__`` from one consumer thread and ``ack``/``nack``
from its worker threads, so the prefetch accounting is guarded by a
condition variable.  A consumer never holds more than ``prefetch``
unsettled messages, and everything it holds is returned to the server at
once (``nak``) when it is closed.
"""

from __future__ import annotations

import contextlib
import queue
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from dramatiq.broker import Consumer, MessageProxy
from dramatiq.common import current_millis
from dramatiq.errors import ConnectionClosed, DecodeError
from dramatiq.message import Message
from nats.aio.msg import Msg

from pipeline.broker.puller import Puller
from pipeline.names import QueueNames

if TYPE_CHECKING:
    from pipeline.broker.broker import JetStreamBroker

#: Durable consumer that holds delayed messages on servers without message schedules.
DELAYED_CONSUMER = "delayed"


class JetStreamMessageProxy(MessageProxy):
    """A message and what settles it: its NATS message and the puller that counted it.

    Dramatiq may settle a message through a newer consumer than the one that
    fetched it (after a consumer restart), so the puller travels with it.
    """

    def __init__(self, message: Message, nats_msg: Msg, puller: Puller) -> None:
        super().__init__(message)
        self._nats_msg = nats_msg
        self._puller = puller


class QueueConsumer(Consumer):
    durable = "workers"

    def __init__(self, broker: JetStreamBroker, names: QueueNames, prefetch: int, timeout: int) -> None:
        self.broker = broker
        self.names = names
        self.timeout = max(timeout, 10) / 1000
        self.arrivals: queue.SimpleQueue[Msg] = queue.SimpleQueue()
        self.puller = Puller(broker.nc, names.stream, self.durable, max(prefetch, 1), self._arrived)
        broker.run(self.puller.start())
        broker.pullers.add(self.puller)

    def _arrived(self, msg: Msg) -> None:
        """On the event loop: a message was delivered to this consumer."""
        self.broker.inflight[id(msg)] = msg
        self.arrivals.put(msg)

    def __next__(self) -> JetStreamMessageProxy | None:
        try:
            msg = self.arrivals.get(timeout=self.timeout)
        except queue.Empty:
            if self.puller.broken:
                self.broker.forget_queue(self.names.queue)
                raise ConnectionClosed(f"pulling from {self.names.stream} failed: {self.puller.broken}") from None
            if self.broker.nc.is_closed:
                raise ConnectionClosed("the NATS connection is closed") from None
            return None
        return self._accept(msg)

    def _accept(self, msg: Msg) -> JetStreamMessageProxy | None:
        """Turn a NATS message into a Dramatiq one; dead-letter what cannot be decoded."""
        try:
            message = Message.decode(msg.data)
        except DecodeError as e:
            self.broker.logger.error("Dead-lettering an undecodable message on %r: %s", self.names.queue, e)
            try:
                self.broker.dead_letter(self.names, msg, "", e)
            finally:
                self.broker.inflight.pop(id(msg), None)  # on failure it comes back after ack_wait
                self.broker.settle(self.puller)
            return None
        return JetStreamMessageProxy(message, msg, self.puller)

    def ack(self, message: JetStreamMessageProxy) -> None:  # type: ignore[override]
        self.broker.ack(message._nats_msg, message._puller)

    def nack(self, message: JetStreamMessageProxy) -> None:  # type: ignore[override]
        self.broker.dead_letter(self.names, message._nats_msg, message.message_id, message._exception)
        self.broker.settle(message._puller)

    def requeue(self, messages: Iterable[JetStreamMessageProxy]) -> None:  # type: ignore[override]
        """Give messages back for immediate redelivery.

        Dramatiq requeues only on the way to ``close()`` (shutdown, lost
        connection), so pulling stops first: the room freed here must not
        be filled again.
        """
        self.puller.stopping = True
        for message in messages:
            self.broker.nak(message._nats_msg, message._puller)

    def close(self) -> None:
        """Stop pulling and hand back, at once, everything delivered but not started."""
        self.broker.pullers.discard(self.puller)
        with contextlib.suppress(Exception):
            self.broker.run(self.puller.stop(), timeout=10)
        while True:
            try:
                msg = self.arrivals.get_nowait()
            except queue.Empty:
                break
            with contextlib.suppress(Exception):
                self.broker.nak(msg, self.puller)


class DelayedConsumer(QueueConsumer):
    """Delay queue for servers without message schedules (nats-server < 2.12).

    A message that is not due yet is ``nak``-ed with the time it has left,
    so JetStream, not worker memory, holds it.  A due message is handed to
    Dramatiq, whose consumer thread moves it to the queue and acks it here.
    """

    durable = DELAYED_CONSUMER

    def _accept(self, msg: Msg) -> JetStreamMessageProxy | None:
        proxy = super()._accept(msg)
        if proxy is None:
            return None
        eta = proxy.options.get("eta")
        remaining = (eta - current_millis()) / 1000 if isinstance(eta, int | float) else 0
        if remaining > 0.005:
            self.broker.nak(msg, self.puller, delay=remaining)
            return None
        return proxy


class IdleConsumer(Consumer):
    """The delay queue's consumer where the server schedules delayed messages itself."""

    def __init__(self, timeout: int) -> None:
        self.timeout = timeout / 1000

    def __next__(self) -> None:
        time.sleep(self.timeout)
        return None

    def ack(self, message: MessageProxy) -> None:
        raise AssertionError("IdleConsumer yields no messages")

    nack = ack
