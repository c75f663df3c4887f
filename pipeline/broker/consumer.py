"""Consumers: how a Dramatiq worker pulls messages from a JetStream consumer.

Dramatiq calls ``__next__`` from one consumer thread and ``ack``/``nack``
from its worker threads, so the prefetch accounting is guarded by a
condition variable.  A consumer never holds more than ``prefetch``
unsettled messages, and everything it holds is returned to the server at
once (``nak``) when it is closed.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

import nats.js.errors
from dramatiq.broker import Consumer, MessageProxy
from dramatiq.common import current_millis
from dramatiq.errors import ConnectionClosed, DecodeError
from dramatiq.message import Message
from nats.aio.msg import Msg

from pipeline.broker.names import QueueNames

if TYPE_CHECKING:
    from pipeline.broker.broker import JetStreamBroker

#: Durable consumer that holds delayed messages on servers without message schedules.
DELAYED_CONSUMER = "delayed"


class JetStreamMessageProxy(MessageProxy):
    def __init__(self, message: Message, nats_msg: Msg) -> None:
        super().__init__(message)
        self._nats_msg = nats_msg


class QueueConsumer(Consumer):
    durable = "workers"

    def __init__(self, broker: JetStreamBroker, names: QueueNames, prefetch: int, timeout: int) -> None:
        self.broker = broker
        self.names = names
        self.prefetch = max(prefetch, 1)
        self.timeout = max(timeout, 10) / 1000
        self.buffer: deque[JetStreamMessageProxy] = deque()
        self.unsettled = 0
        self.room = threading.Condition()
        self.subscription = broker.run(broker.js.pull_subscribe_bind(durable=self.durable, stream=names.stream))

    def __next__(self) -> JetStreamMessageProxy | None:
        if self.buffer:
            return self.buffer.popleft()
        with self.room:
            if self.unsettled >= self.prefetch:
                self.room.wait(self.timeout)
            wanted = self.prefetch - self.unsettled
            if wanted <= 0:
                return None
            self.unsettled += wanted  # reserve the slots while fetching
        msgs: list[Msg] = []
        try:
            msgs = self._fetch(wanted)
        finally:
            self._release(wanted - len(msgs))
        for msg in msgs:
            proxy = self._accept(msg)
            if proxy is not None:
                self.buffer.append(proxy)
        return self.buffer.popleft() if self.buffer else None

    def _fetch(self, batch: int) -> list[Msg]:
        try:
            return self.broker.loop.run(self.subscription.fetch(batch, timeout=self.timeout))
        except TimeoutError:
            return []
        except nats.js.errors.APIError as e:
            # The stream or consumer may be gone (a memory-store server was
            # restarted): declare it again when the consumer restarts.
            self.broker.forget_queue(self.names.queue)
            raise ConnectionClosed(e) from None
        except Exception as e:
            raise ConnectionClosed(e) from None

    def _accept(self, msg: Msg) -> JetStreamMessageProxy | None:
        """Turn a NATS message into a Dramatiq one; dead-letter what cannot be decoded."""
        try:
            message = Message.decode(msg.data)
        except DecodeError as e:
            self.broker.logger.error("Dead-lettering an undecodable message on %r: %s", self.names.queue, e)
            self.broker.dead_letter(self.names, msg, "", e)
            self._release(1)
            return None
        self.broker.inflight[id(msg)] = msg
        return JetStreamMessageProxy(message, msg)

    def _release(self, count: int) -> None:
        if count <= 0:
            return
        with self.room:
            self.unsettled -= count
            self.room.notify()

    def _settled(self, message: JetStreamMessageProxy) -> None:
        self.broker.inflight.pop(id(message._nats_msg), None)
        self._release(1)

    def ack(self, message: JetStreamMessageProxy) -> None:  # type: ignore[override]
        self.broker.run(message._nats_msg.ack())
        self._settled(message)

    def nack(self, message: JetStreamMessageProxy) -> None:  # type: ignore[override]
        self.broker.dead_letter(self.names, message._nats_msg, message.message_id, message._exception)
        self._settled(message)

    def requeue(self, messages: Iterable[JetStreamMessageProxy]) -> None:  # type: ignore[override]
        """Give messages back for immediate redelivery (shutdown, lost connection)."""
        for message in messages:
            with contextlib.suppress(Exception):
                self.broker.run(message._nats_msg.nak(), timeout=5)
            self._settled(message)

    def close(self) -> None:
        self.requeue(list(self.buffer))
        self.buffer.clear()
        with contextlib.suppress(Exception):
            self.broker.run(self.subscription.unsubscribe(), timeout=5)


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
            with contextlib.suppress(Exception):
                self.broker.run(msg.nak(delay=remaining), timeout=5)
            self._settled(proxy)
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
