"""``JetStreamBroker``: Dramatiq on NATS JetStream.

Each Dramatiq queue is one WorkQueue stream with one durable pull consumer
(see :mod:`pipeline.names`).  ``num_pending + num_ack_pending`` of
that consumer is the queue's lag: what KEDA's ``nats-jetstream`` scaler
reads.

Delays never sit unacknowledged in worker memory.  On nats-server 2.12 and
later a delayed message is a JetStream *message schedule*: it is stored on
``<subject>.delayed.<id>`` and the server publishes it to the queue's
subject at its time, so it is not lag until it is due.  On older servers a
second durable consumer (``delayed``) reads those subjects and negatively
acknowledges each message with the time left, so the *server* holds it
until it is due; Dramatiq's delay-queue consumer then moves it over.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import partial
from typing import Any

import nats
import nats.errors
import nats.js.errors
from dramatiq.broker import Broker, Consumer
from dramatiq.common import current_millis, dq_name, q_name
from dramatiq.errors import ConnectionClosed, QueueJoinTimeout, QueueNotFound, Retry
from dramatiq.message import Message
from dramatiq.middleware import Middleware
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    ConsumerInfo,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from pipeline.broker.assets import Asset, add_consumer, add_or_update_stream, describe, owned_by, stream_names
from pipeline.broker.connection import INITIAL_CONNECT_DEADLINE, TRANSIENT_ERRORS, Connection
from pipeline.broker.consumer import (
    DELAYED_CONSUMER,
    DelayedConsumer,
    IdleConsumer,
    JetStreamMessageProxy,
    QueueConsumer,
)
from pipeline.broker.errors import BatchPublishError, DeadLetterError
from pipeline.broker.loop import EventLoopThread
from pipeline.broker.publisher import Batch, Pending
from pipeline.names import DEFAULT_PREFIX, QueueNames, dead_stream, dead_wildcard
from pipeline.redact import redact_text
from pipeline.settings import current

#: How long dead letters are kept: Dramatiq's own setting and default (7 days).
DEAD_MESSAGE_TTL_MS = int(os.getenv("dramatiq_dead_message_ttl", 86400000 * 7))

#: Exceptions of dead-lettered messages kept for ``join(fail_fast=True)``.
REMEMBERED_DEAD_EXCEPTIONS = 1000

#: Jobs queued for the event loop past which a batch producer waits for it.
OUTBOX_HIGH_WATER = 20_000


def dedupe_key(message: Message) -> str:
    """The ``Nats-Msg-Id`` a message is published under.

    The message id alone would make JetStream drop Dramatiq's own retries
    (the same id re-enqueued with ``retries`` incremented) as duplicates, so
    the retry count is part of the key.  Subject tokens may not hold dots.
    """
    retries = message.options.get("retries", 0)
    key = message.message_id if not retries else f"{message.message_id}-{retries}"
    return key.replace(".", "_")


#: Bytes kept for the dead-letter headers when a message is as large as the server's max payload.
DEAD_LETTER_HEADROOM = 8192
#: What is kept of a message too large to be dead-lettered whole (an oversized event, say).
TRUNCATED_DEAD_LETTER_BYTES = 64 * 1024


def describe_exception(exc: BaseException | None) -> str:
    """A dead letter's reason: the exception's type and message; for a transient failure whose retries ran
    out (raised as ``dramatiq.Retry``): its message."""
    if exc is None:
        return "failed (no exception recorded)"
    if isinstance(exc, Retry):
        return f"retries ran out: {exc}"[:1000]
    return f"{type(exc).__name__}: {exc}"[:1000]


class JetStreamBroker(Broker):
    """A Dramatiq broker on NATS JetStream.

    Parameters:
      url: NATS server URL(s), comma-separated for a cluster.  Defaults to
        ``PIPELINE_NATS_URL`` (:mod:`pipeline.settings`); when that is unset too, an embedded
        ``nats-server`` is started under ``home`` (``.pipeline/``).
      prefix: prepended to every stream and subject, so several pipelines
        can share one NATS account.
      ack_wait: seconds JetStream waits for an ack before redelivering.  A
        crashed worker's messages come back after this; live workers send
        ``in_progress`` heartbeats, so long tasks are not redelivered.
      replicas, storage: stream replicas (3 on a NATS cluster) and
        ``"file"`` or ``"memory"`` storage; default ``PIPELINE_NATS_REPLICAS``
        and ``PIPELINE_NATS_STORAGE`` (1, file).
      max_ack_pending: messages in flight across all workers of a queue.
      duplicate_window: seconds within which a re-published message id is
        dropped as a duplicate.
      publish_timeout: seconds ``send()`` keeps retrying a publish through a
        disconnect before raising ``ConnectionClosed``.
      user, password, token, credentials (a ``.creds`` file), nkeys_seed,
      tls (an ``ssl.SSLContext``), tls_hostname: authentication.
      fail_fast_default: as ``StubBroker``: ``join`` raises when a message
        was dead-lettered.
      connect_timeout: seconds the first connection may take before
        ``ConnectionFailed`` (workers wait for a server that is starting;
        a command line gives up sooner).
      **connect_options: passed through to ``nats.connect``.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        middleware: list[Middleware] | None = None,
        prefix: str = DEFAULT_PREFIX,
        ack_wait: float = 30.0,
        replicas: int | None = None,
        storage: str | None = None,
        max_ack_pending: int = 20_000,
        duplicate_window: float = 120.0,
        dead_message_ttl: int = DEAD_MESSAGE_TTL_MS,
        publish_timeout: float = 30.0,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        credentials: str | None = None,
        nkeys_seed: str | None = None,
        tls: ssl.SSLContext | None = None,
        tls_hostname: str | None = None,
        home: str | os.PathLike[str] | None = None,
        fail_fast_default: bool = True,
        connect_timeout: float = INITIAL_CONNECT_DEADLINE,
        **connect_options: Any,
    ) -> None:
        super().__init__(middleware=middleware)
        QueueNames(prefix, "check")  # validates the prefix early
        settings = current()
        replicas = replicas or settings.nats.replicas
        storage = storage or settings.nats.storage
        if storage not in ("file", "memory"):
            raise ValueError("storage must be 'file' or 'memory'")
        self.prefix = prefix
        self.ack_wait = ack_wait
        self.replicas = replicas
        self.storage = StorageType.FILE if storage == "file" else StorageType.MEMORY
        self.max_ack_pending = max_ack_pending
        self.duplicate_window = duplicate_window
        self.dead_message_ttl = dead_message_ttl
        self.publish_timeout = publish_timeout
        self.fail_fast_default = fail_fast_default
        self.connection = Connection(
            url or settings.nats.url,
            home=home or settings.home,
            name=f"dramatiq-{prefix}-{os.getpid()}",
            connect_options={
                "user": user,
                "password": password,
                "token": token,
                "user_credentials": credentials,
                "nkeys_seed": nkeys_seed,
                "tls": tls,
                "tls_hostname": tls_hostname,
                **connect_options,
            },
            connect_timeout=connect_timeout,
            ack_wait=ack_wait,
            publish_timeout=publish_timeout,
            logger=self.logger,
        )
        self.queues: set[str] = set()
        self._names: dict[str, QueueNames] = {}
        self._ready_queues: set[str] = set()
        self._batch = threading.local()
        #: Exceptions of messages dead-lettered by this process, by message
        #: id, so ``join(fail_fast=True)`` re-raises the real exception.
        self._dead_exceptions: OrderedDict[str, BaseException] = OrderedDict()

    # -- the connection (``connection.py``) --------------------------------

    @property
    def url(self) -> str | None:
        return self.connection.url

    @property
    def connect_timeout(self) -> float:
        return self.connection.connect_timeout

    @connect_timeout.setter
    def connect_timeout(self, seconds: float) -> None:
        self.connection.connect_timeout = seconds

    @property
    def loop(self) -> EventLoopThread:
        return self.connection.loop

    @property
    def js(self) -> JetStreamContext:
        return self.connection.js

    @property
    def nc(self) -> NatsClient:
        return self.connection.nc

    @property
    def safe_url(self) -> str:
        """The URL with any credentials in it masked, for messages and logs."""
        return self.connection.safe_url

    @property
    def server_supports_schedules(self) -> bool:
        """True when delays use server-side message schedules (nats-server >= 2.12)."""
        self.connection.connect()
        return self.connection.schedules

    def close(self) -> None:
        """Close the NATS connection and stop the broker's event loop."""
        self._ready_queues.clear()
        self.connection.close()

    def run(self, coro: Any, timeout: float | None = None) -> Any:
        """Run a nats.py coroutine on the broker's loop, mapping disconnects to ``ConnectionClosed``."""
        return self.connection.run(coro, timeout)

    # -- queues ----------------------------------------------------------

    def names(self, queue_name: str) -> QueueNames:
        names = self._names.get(queue_name)
        if names is None:
            names = self._names[queue_name] = QueueNames(self.prefix, q_name(queue_name))
        return names

    def declare_queue(self, queue_name: str) -> None:
        """Declare a queue; its stream is created on first use, not here.

        As with Dramatiq's own brokers, a delay queue (``<queue>.DQ``) is
        declared beside it; on servers with message schedules its consumer
        stays idle.
        """
        canonical = q_name(queue_name)
        if canonical in self.queues:
            return
        self.names(canonical)  # validate the name before anything is emitted
        self.emit_before("declare_queue", canonical)
        self.queues.add(canonical)
        self.emit_after("declare_queue", canonical)
        delayed = dq_name(canonical)
        self.delay_queues.add(delayed)
        self.emit_after("declare_delay_queue", delayed)

    def get_declared_queues(self) -> set[str]:
        return self.queues.copy()

    def _ensure_queue(self, queue_name: str) -> QueueNames:
        """Create (or update) the stream and consumers of a queue on the server."""
        names = self.names(queue_name)
        if names.queue not in self.queues:
            raise QueueNotFound(queue_name)
        if names.queue in self._ready_queues:
            return names
        self.connection.connect()
        self.run(self._declare_streams(names), timeout=30)
        self._ready_queues.add(names.queue)
        return names

    async def _declare_streams(self, names: QueueNames) -> None:
        js = self.connection.connected_js
        assert js is not None
        config = StreamConfig(
            name=names.stream,
            subjects=[names.subject, names.delayed_wildcard],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=self.storage,
            num_replicas=self.replicas,
            duplicate_window=self.duplicate_window,
        )
        if self.connection.schedules:  # servers before 2.12 refuse the field
            config.allow_msg_schedules = True
        await self._add_or_update_stream(config)
        await add_consumer(
            js,
            names.stream,
            ConsumerConfig(
                durable_name=names.consumer,
                filter_subject=names.subject,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self.ack_wait,
                max_deliver=-1,
                max_ack_pending=self.max_ack_pending,
            ),
        )
        if not self.connection.schedules:
            await add_consumer(
                js,
                names.stream,
                ConsumerConfig(
                    durable_name=DELAYED_CONSUMER,
                    filter_subject=names.delayed_wildcard,
                    ack_policy=AckPolicy.EXPLICIT,
                    ack_wait=self.ack_wait,
                    max_deliver=-1,
                    # Every waiting delay is ack-pending here: no cap, or a thousand
                    # long delays would hold up a one-second retry behind them.
                    max_ack_pending=-1,
                ),
            )
        await self._add_or_update_stream(
            StreamConfig(
                name=dead_stream(self.prefix),
                subjects=[dead_wildcard(self.prefix)],
                retention=RetentionPolicy.LIMITS,
                discard=DiscardPolicy.OLD,
                max_age=self.dead_message_ttl / 1000,
                storage=self.storage,
                num_replicas=self.replicas,
                duplicate_window=self.duplicate_window,
            )
        )

    async def _add_or_update_stream(self, config: StreamConfig) -> None:
        js = self.connection.connected_js
        assert js is not None
        await add_or_update_stream(js, config)

    # -- publishing ------------------------------------------------------

    def enqueue(self, message: Message, *, delay: int | None = None) -> Message:
        """Store a message in JetStream; return once the server has it.

        Inside ``with broker.batch():`` the publish is not awaited here but
        when the block exits.
        """
        canonical = q_name(message.queue_name)
        names = self._ensure_queue(canonical)
        subject, headers, message = self._prepare(names, message, delay)
        self.emit_before("enqueue", message, delay)
        data = message.encode()
        batch: Batch | None = getattr(self._batch, "current", None)
        if batch is not None:
            self._publish_later(Pending(message, subject, data, headers, batch))
        else:
            self._publish_now(message, subject, data, headers)
        self.emit_after("enqueue", message, delay)
        return message

    def _publish_later(self, pending: Pending) -> None:
        """Hand a publish to the loop through the outbox; its PubAck is counted in its batch."""
        self.connection.connect()
        outbox, publisher = self.connection.batch_outbox, self.connection.publisher
        assert outbox is not None and publisher is not None
        while len(outbox.jobs) > OUTBOX_HIGH_WATER:
            time.sleep(0.001)  # let the loop catch up: memory stays bounded
        pending.batch.items.append(pending)
        outbox.put(partial(publisher.publish, pending))

    def _publish_now(self, message: Message, subject: str, data: bytes, headers: dict[str, str]) -> None:
        """Publish one message and wait on this thread for its PubAck.

        The usual case takes the batch path (the outbox, one subscription for
        every PubAck) and waits on a thread event: a task, a reply future and a
        wake-up of the loop per message cost a worker as much as the rest of
        sending.  A PubAck that does not come in time, or says the message was
        not stored, falls back to ``_publish``, which retries through
        disconnects and raises what the server said.
        """
        answered = threading.Event()
        pending = Pending(message, subject, data, headers, Batch(answered_thread=answered))
        self._publish_later(pending)
        if answered.wait(min(5.0, self.publish_timeout)) and pending.stored:
            return

        async def again() -> None:
            assert self.connection.publisher is not None
            self.connection.publisher.abandon(pending.batch)
            await self._publish(subject, data, headers)

        try:
            self.run(again())
        except nats.js.errors.APIError as e:
            raise ConnectionClosed(e) from None

    def _prepare(self, names: QueueNames, message: Message, delay: int | None) -> tuple[str, dict[str, str], Message]:
        """Choose the subject and headers for a message, and the message as stored."""
        key = dedupe_key(message)
        if not delay or delay <= 0:
            if "eta" in message.options:
                message = message.copy(queue_name=names.queue)
                del message.options["eta"]
            return names.subject, {"Nats-Msg-Id": key}, message
        eta = current_millis() + delay
        delayed_key = f"{key}-d{eta}"
        headers = {"Nats-Msg-Id": delayed_key}
        if self.server_supports_schedules:
            # The server delivers it to the queue at its time: store it as
            # the message the worker should see, without an eta.
            at = datetime.fromtimestamp(eta / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            headers["Nats-Schedule"] = f"@at {at}"
            headers["Nats-Schedule-Target"] = names.subject
            message = message.copy(queue_name=names.queue)
            message.options.pop("eta", None)
        else:
            message = message.copy(queue_name=dq_name(names.queue), options={"eta": eta})
        return names.delayed_subject(delayed_key), headers, message

    async def _publish(self, subject: str, data: bytes, headers: dict[str, str]) -> None:
        """Publish and wait for the PubAck, retrying through disconnects.

        Every attempt carries the same ``Nats-Msg-Id``, so an attempt whose
        ack was lost but whose message was stored is dropped as a duplicate.
        """
        js = self.connection.connected_js
        assert js is not None
        deadline = time.monotonic() + self.publish_timeout
        delay = 0.05
        while True:
            try:
                await js.publish(subject, data, headers=headers, timeout=min(5.0, self.publish_timeout))
                return
            except TRANSIENT_ERRORS:
                if time.monotonic() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Publish every ``enqueue`` in the block without waiting, then wait for all.

        On exit every message has been stored: those whose PubAck did not
        come are published again (the same ``Nats-Msg-Id``, so never twice)
        until ``publish_timeout``; ``BatchPublishError`` names any that
        still were not.  Nothing is dropped silently.
        """
        if getattr(self._batch, "current", None) is not None:
            yield  # nested: the outer block waits
            return
        self.connection.connect()
        self._batch.current = batch = Batch()
        try:
            yield
        finally:
            self._batch.current = None
            failed = self.loop.run(self._settle(batch))
            if failed:
                raise BatchPublishError(failed)

    async def _settle(self, batch: Batch) -> list[tuple[Message, BaseException]]:
        outbox, publisher = self.connection.batch_outbox, self.connection.publisher
        assert outbox is not None and publisher is not None
        deadline = time.monotonic() + self.publish_timeout
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(outbox.flushed(), self.publish_timeout)
        if batch.unanswered:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(batch.answered.wait(), max(0.1, deadline - time.monotonic()))
        publisher.abandon(batch)
        unconfirmed = [p for p in batch.items if not p.stored]
        retried = await asyncio.gather(
            *(self._publish(p.subject, p.data, p.headers) for p in unconfirmed), return_exceptions=True
        )
        return [(p.message, e) for p, e in zip(unconfirmed, retried, strict=True) if isinstance(e, BaseException)]

    # -- consuming -------------------------------------------------------

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Consumer:
        names = self._ensure_queue(queue_name)
        consumer = QueueConsumer
        if queue_name.endswith(".DQ"):
            if self.server_supports_schedules and not self._has_delayed_consumer(names):
                return IdleConsumer(timeout)
            consumer = DelayedConsumer
        return consumer(self.connection, names, prefetch, timeout, dead_letter=self.dead_letter,
                        forget=self.forget_queue, logger=self.logger, stalled=self._stalled)  # fmt: skip

    def emit_after(self, signal: str, *args: Any, **kwargs: Any) -> None:
        """Dramatiq's, except after a message was processed: if a middleware fails there (Dramatiq's
        ``Retries`` cannot store the retry because NATS is away), the message is handed back to come
        again rather than acknowledged, so an outage loses nothing.  Dramatiq itself logs the failure
        and acks the message, which would drop the retry."""
        if signal not in ("process_message", "skip_message"):
            return super().emit_after(signal, *args, **kwargs)
        for middleware in reversed(self.middleware):
            try:
                getattr(middleware, "after_" + signal)(self, *args, **kwargs)
            except Exception:
                self.logger.critical("Unexpected failure in after_%s of %r.", signal, middleware, exc_info=True)
                if args and isinstance(args[0], JetStreamMessageProxy):
                    args[0].redeliver = True

    def _stalled(self, queue_name: str, waiting: int | None, seconds: float) -> None:
        """A consumer got nothing for ``seconds`` while messages wait: middleware hear of it
        (``after_consumer_stall(broker, queue_name, waiting, seconds)``; the worker metrics count it)."""
        self.emit_after("consumer_stall", queue_name, waiting, seconds)

    def _has_delayed_consumer(self, names: QueueNames) -> bool:
        """True where a server upgraded past 2.12 still holds delays stored the old way: drain them."""
        try:
            self.run(self.js.consumer_info(names.stream, DELAYED_CONSUMER))
        except nats.js.errors.NotFoundError:
            return False
        return True

    def dead_letter(self, names: QueueNames, msg: Msg, message_id: str, exception: BaseException | None) -> None:
        """Store a failed message on the dead-letter stream with its reason, then terminate it."""
        # Unique even when a stream is re-created and its sequences start again.
        key = f"dead-{msg.metadata.stream}-{msg.metadata.sequence.stream}-{message_id or time.time_ns()}"
        self._store_dead(names, msg.data, msg.subject, key, message_id, exception)
        self.run(msg.term())
        self.connection.inflight.pop(id(msg), None)

    def dead_letter_message(self, message: Message, exception: BaseException) -> None:
        """Store ``message`` on the dead-letter stream with ``exception`` as its reason, without its ever
        having been delivered: a check of a batch that failed for good (``actors.batches``).  ``pipeline dlq
        replay`` sends it to its queue like any dead letter."""
        names = self._ensure_queue(q_name(message.queue_name))
        key = f"dead-{dedupe_key(message)}"
        self._store_dead(names, message.encode(), names.subject, key, message.message_id, exception)
        self.emit_after("nack", message)  # counted where Dramatiq's own rejections are (the Prometheus middleware)

    def _store_dead(
        self, names: QueueNames, data: bytes, subject: str, key: str, message_id: str, exception: BaseException | None
    ) -> None:
        # NATS headers are ASCII: redaction's "…" becomes "...", anything else a visible escape.
        reason = redact_text(describe_exception(exception)).replace("\r", " ").replace("\n", " ").replace("…", "...")
        reason = reason.encode("ascii", "backslashreplace").decode()
        what = f"message {message_id}" if message_id else "a message"
        self.logger.warning("Dead-lettered %s from queue %r: %s", what, names.queue, reason)
        headers = {
            "Nats-Msg-Id": key,
            "Pipeline-Dead-Reason": reason,
            "Pipeline-Queue": names.queue,
            "Pipeline-Message-Id": message_id,
            "Pipeline-Failed-At": datetime.now(UTC).isoformat(timespec="seconds"),
            "Pipeline-Subject": subject,  # where a replay sends it back
        }
        if exception is not None and message_id:
            self._dead_exceptions[message_id] = exception
            while len(self._dead_exceptions) > REMEMBERED_DEAD_EXCEPTIONS:  # a worker runs for months
                self._dead_exceptions.popitem(last=False)
        room = self.connection.nc.max_payload - DEAD_LETTER_HEADROOM
        if len(data) > room:  # stored, it fit; with our headers it would not: keep its start, say so
            headers["Pipeline-Truncated-From"] = str(len(data))
            data = data[:TRUNCATED_DEAD_LETTER_BYTES]
        self.run(self._publish(names.dead_subject, data, headers))

    def forget_queue(self, queue_name: str) -> None:
        """Re-declare a queue's stream and consumers on its next use."""
        self._ready_queues.discard(q_name(queue_name))

    # -- inspection and tests --------------------------------------------

    def consumer_info(self, queue_name: str) -> ConsumerInfo:
        """The state of a queue's worker consumer (declared on the spot for a fresh pipeline)."""
        names = self._ensure_queue(queue_name)
        return self.run(self.js.consumer_info(names.stream, names.consumer), timeout=10)

    def lag(self, queues: set[str] | None = None) -> dict[str, int]:
        """``num_pending + num_ack_pending`` of each queue's consumer: the figure KEDA scales on."""
        result = {}
        for queue in sorted(queues or self.queues):
            info = self.consumer_info(queue)
            result[queue] = (info.num_pending or 0) + (info.num_ack_pending or 0)
        return result

    def assets(self) -> list[Asset]:
        """This pipeline's streams, KV buckets and object store: replicas, storage and leader of each."""

        async def gather() -> list[Asset]:
            names = [name for name in await stream_names(self.nc) if owned_by(self.prefix, name)]
            return [describe(await self.js.stream_info(name)) for name in names]

        return sorted(self.run(gather()), key=lambda asset: (asset.kind, asset.name))

    def dead_letter_count(self, queue_name: str) -> int:
        """Dead letters kept for a queue (any name: the ingest dead-letters under ``events``)."""
        names = self.names(queue_name)
        try:
            info = self.run(self.js.stream_info(dead_stream(self.prefix), subjects_filter=names.dead_subject))
        except nats.js.errors.NotFoundError:
            return 0
        return (info.state.subjects or {}).get(names.dead_subject, 0)

    def flush(self, queue_name: str) -> None:
        """Drop every message of a queue: ready, delayed and dead."""
        names = self._ensure_queue(queue_name)
        self.run(self.js.purge_stream(names.stream))
        self.run(self.js.purge_stream(dead_stream(self.prefix), subject=names.dead_subject))
        self._dead_exceptions.clear()

    def flush_all(self) -> None:
        for queue_name in self.queues:
            self.flush(queue_name)

    def join(self, queue_name: str, *, timeout: int | None = None, fail_fast: bool | None = None) -> None:
        """Wait until every message of a queue, delayed ones included, is processed.

        Same meaning as ``StubBroker.join``: ``timeout`` in milliseconds
        raises ``QueueJoinTimeout``; with ``fail_fast`` a message that was
        dead-lettered since the last flush is raised (its own exception when
        this process dead-lettered it).
        """
        if q_name(queue_name) not in self.queues:
            raise QueueNotFound(queue_name)
        names = self._ensure_queue(queue_name)
        deadline = timeout and time.monotonic() + timeout / 1000
        while True:
            info = self.run(self.js.stream_info(names.stream))
            if info.state.messages == 0:
                break
            if deadline and time.monotonic() > deadline:
                raise QueueJoinTimeout(queue_name)
            time.sleep(0.01)
        should_fail_fast = self.fail_fast_default if fail_fast is None else fail_fast
        if should_fail_fast and self.dead_letter_count(queue_name):
            last = self.run(self.js.get_last_msg(dead_stream(self.prefix), names.dead_subject))
            headers = last.headers or {}
            message_id = headers.get("Pipeline-Message-Id", "")
            if message_id in self._dead_exceptions:
                raise self._dead_exceptions[message_id]
            raise DeadLetterError(message_id, headers.get("Pipeline-Dead-Reason", "unknown"))
