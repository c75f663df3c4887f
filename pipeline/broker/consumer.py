"""Consumers: how a Dramatiq worker pulls messages from a JetStream consumer.

Dramatiq calls ``__next__`` from one consumer thread and ``ack``/``nack``
from its worker threads, so the prefetch accounting is guarded by a
condition variable.  A consumer never holds more than ``prefetch``
unsettled messages, and everything it holds is returned to the server at
once (``nak``) when it is closed.  Like Dramatiq's RabbitMQ consumer, it
settles its own messages, through the connection (``connection.py``); the
broker gives it only what the broker owns: dead-lettering, and forgetting
a queue whose consumer broke.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import time
from collections.abc import Callable, Iterable

from dramatiq.broker import Consumer, MessageProxy
from dramatiq.common import current_millis
from dramatiq.errors import ConnectionClosed, DecodeError
from dramatiq.message import Message
from nats.aio.msg import Msg

from pipeline.broker.connection import Connection
from pipeline.broker.puller import Puller
from pipeline.names import QueueNames

#: How the broker dead-letters a message: (queue names, the NATS message, message id, the exception).
DeadLetter = Callable[[QueueNames, Msg, str, BaseException | None], None]

#: Durable consumer that holds delayed messages on servers without message schedules.
DELAYED_CONSUMER = "delayed"

#: Seconds without a delivery, with room to take more, after which a consumer asks whether its queue has
#: messages waiting: if it has (or cannot be asked), the consumer is stalled and says so.
STALL_SECONDS = 10.0

#: Seconds before a message whose follow-up could not be stored is delivered again.
REDELIVER_AFTER = 5.0

#: How the broker is told of a stall: (queue, messages waiting or None when unknown, seconds since a delivery).
Stalled = Callable[[str, int | None, float], None]


class JetStreamMessageProxy(MessageProxy):
    """A message and what settles it: its NATS message and the puller that counted it.

    Dramatiq may settle a message through a newer consumer than the one that
    fetched it (after a consumer restart), so the puller travels with it.
    """

    def __init__(self, message: Message, nats_msg: Msg, puller: Puller) -> None:
        super().__init__(message)
        self._nats_msg = nats_msg
        self._puller = puller
        #: Set when what should follow the message's processing could not be stored (a retry while
        #: NATS is away): it is then handed back for redelivery instead of acknowledged.
        self.redeliver = False


class QueueConsumer(Consumer):
    durable = "workers"

    def __init__(
        self,
        connection: Connection,
        names: QueueNames,
        prefetch: int,
        timeout: int,
        *,
        dead_letter: DeadLetter,
        forget: Callable[[str], None],
        logger: logging.Logger,
        stalled: Stalled | None = None,
    ) -> None:
        self.connection = connection
        self.names = names
        self.timeout = max(timeout, 10) / 1000
        self.dead_letter = dead_letter
        self.forget = forget
        self.logger = logger
        self.stalled = stalled
        self.arrivals: queue.SimpleQueue[Msg] = queue.SimpleQueue()
        self._delivered_at = self._checked_at = time.monotonic()
        self._stall_reported = False
        self.puller = Puller(connection.nc, names.stream, self.durable, max(prefetch, 1), self._arrived)
        connection.run(self.puller.start())
        connection.pullers.add(self.puller)

    def _arrived(self, msg: Msg) -> None:
        """On the event loop: a message was delivered to this consumer."""
        self.connection.inflight[id(msg)] = msg
        self.arrivals.put(msg)

    def __next__(self) -> JetStreamMessageProxy | None:
        try:
            msg = self.arrivals.get(timeout=self.timeout)
        except queue.Empty:
            if self.puller.broken:
                self.forget(self.names.queue)
                raise ConnectionClosed(f"pulling from {self.names.stream} failed: {self.puller.broken}") from None
            if self.connection.nc.is_closed:
                raise ConnectionClosed("the NATS connection is closed") from None
            self._watch_for_stall()
            return None
        self._delivered_at = time.monotonic()
        if self._stall_reported:
            self._stall_reported = False
            self.logger.info("%s: consuming again", self.names.queue)
        return self._accept(msg)

    def _watch_for_stall(self) -> None:
        """No delivery for STALL_SECONDS with room for more: messages waiting mean a stall (a consumer
        whose leader is being elected, a server away), which is logged once and counted every time."""
        now = time.monotonic()
        quiet = now - self._delivered_at
        if quiet < STALL_SECONDS or now - self._checked_at < STALL_SECONDS or self.puller.held >= self.puller.prefetch:
            return
        self._checked_at = now
        js = self.connection.connected_js
        try:
            if js is None:
                raise ConnectionClosed("not connected")
            waiting: int | None = self.connection.run(
                js.consumer_info(self.names.stream, self.durable), timeout=2
            ).num_pending
        except Exception:
            waiting = None  # the consumer cannot even be asked: as stalled as it gets
        if waiting == 0:
            return  # nothing to do is not a stall
        if not self._stall_reported:
            self._stall_reported = True
            self.logger.warning(
                "%s: no message for %.0f s while %s wait; pulling goes on (a leader election or a server away?)",
                self.names.queue, quiet, "messages" if waiting is None else waiting,
            )  # fmt: skip
        if self.stalled is not None:
            self.stalled(self.names.queue, waiting, quiet)

    def _accept(self, msg: Msg) -> JetStreamMessageProxy | None:
        """Turn a NATS message into a Dramatiq one; dead-letter what cannot be decoded."""
        try:
            message = Message.decode(msg.data)
        except DecodeError as e:
            self.logger.error("Dead-lettering an undecodable message on %r: %s", self.names.queue, e)
            try:
                self.dead_letter(self.names, msg, "", e)
            finally:  # on failure it comes back after ack_wait
                self.connection.settled(msg, self.puller)
            return None
        return JetStreamMessageProxy(message, msg, self.puller)

    def ack(self, message: JetStreamMessageProxy) -> None:  # type: ignore[override]
        if message.redeliver:
            self.connection.nak(message._nats_msg, message._puller, delay=REDELIVER_AFTER)
            return
        self.connection.ack(message._nats_msg, message._puller)

    def nack(self, message: JetStreamMessageProxy) -> None:  # type: ignore[override]
        self.dead_letter(self.names, message._nats_msg, message.message_id, message._exception)
        self.connection.settled(message._nats_msg, message._puller)

    def requeue(self, messages: Iterable[JetStreamMessageProxy]) -> None:  # type: ignore[override]
        """Give messages back for immediate redelivery.

        Dramatiq requeues only on the way to ``close()`` (shutdown, lost
        connection), so pulling stops first: the room freed here must not
        be filled again.
        """
        self.puller.stopping = True
        for message in messages:
            self.connection.nak(message._nats_msg, message._puller)

    def close(self) -> None:
        """Stop pulling and hand back, at once, everything delivered but not started."""
        self.connection.pullers.discard(self.puller)
        with contextlib.suppress(Exception):
            self.connection.run(self.puller.stop(), timeout=10)
        while True:
            try:
                msg = self.arrivals.get_nowait()
            except queue.Empty:
                break
            with contextlib.suppress(Exception):
                self.connection.nak(msg, self.puller)


class DelayedConsumer(QueueConsumer):
    """Delay queue for servers without message schedules (nats-server < 2.12).

    A message that is not due yet is ``nak``-ed with the time it has left,
    so JetStream, not worker memory, holds it.  A due message is handed to
    Dramatiq, whose consumer thread moves it to the queue and acks it here.
    """

    durable = DELAYED_CONSUMER

    def _watch_for_stall(self) -> None:
        pass  # waiting delays are not due: their quiet is no stall

    def _accept(self, msg: Msg) -> JetStreamMessageProxy | None:
        proxy = super()._accept(msg)
        if proxy is None:
            return None
        eta = proxy.options.get("eta")
        remaining = (eta - current_millis()) / 1000 if isinstance(eta, int | float) else 0
        if remaining > 0.005:
            self.connection.nak(msg, self.puller, delay=remaining)
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
