"""Ingest: JSON events from any producer become Dramatiq messages for the stages.

Producers publish to ``<prefix>.events.<kind>``; a WorkQueue stream keeps
each event until it is ingested.  A valid event is enqueued on ``fetch``
(or on ``scrape``, for content the producer pushed) under a message id
derived from the event's stream sequence, so an event ingested twice (a
crash between enqueue and ack) runs once.  The checks for ``fetch`` that
one pull brings go out up to 16 to a ``fetch_batch`` message, under an id
made of their events' ids (see ``_fetch_batch`` for what a crash does to
them).  An invalid event is dead-lettered with the validation error and
removed: never dropped silently, never a crash.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import dramatiq
from dramatiq.errors import ConnectionClosed
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig
from sqlalchemy.exc import OperationalError

from pipeline import metrics, queries
from pipeline.batching import MAX_BYTES, groups
from pipeline.broker import BatchPublishError, JetStreamBroker, QueueNames
from pipeline.broker.assets import add_consumer, add_or_update_stream
from pipeline.events import CheckEvent, ContentEvent, Event, InvalidEventError, MonitorEvent, parse_event
from pipeline.jobs import monitor_job, monitor_source, stage_message, watched_source
from pipeline.names import EVENT_KINDS, EVENTS_QUEUE, events_stream
from pipeline.outage import Outage
from pipeline.service import BackgroundService
from pipeline.stages import Context

logger = logging.getLogger(__name__)

CONSUMER = "ingest"
#: The largest job a stage message may carry.
MAX_JOB_BYTES = MAX_BYTES
#: How often an event is tried while NATS or the database is away, before it is dead-lettered.
MAX_DELIVERIES = 20
#: The store being away (not the event's fault): the event is tried again.
STORE_ERRORS: tuple[type[BaseException], ...] = (OperationalError, ConnectionClosed, NatsError, TimeoutError, OSError)


def job_for(event: Event, ctx: Context) -> tuple[str, dict[str, Any]]:
    """The first stage's queue and the job for an event."""
    if isinstance(event, MonitorEvent):
        monitor = queries.get_monitor(ctx.engine, event.monitor_id)
        if monitor is None:
            raise InvalidEventError(f"monitor_id: no monitor {event.monitor_id}")
        queue, job = monitor_job(monitor)
        return queue, dict(job)
    common = {"selector": event.selector, "rule": event.rule, "question": event.question, "notify": list(event.notify)}
    if isinstance(event, CheckEvent):
        url = str(event.url)
        if event.fetch == "browser":  # its own history: a rendered page is not the page as fetched
            source = watched_source(url, event.selector, "render", ctx.webhook_secret.encode())
            return "render", {"source": source, "url": url, **common, "wait_for": event.wait_for}
        source = watched_source(url, event.selector, "fetch", ctx.webhook_secret.encode())
        return "fetch", {"source": source, "url": url, **common}
    assert isinstance(event, ContentEvent)
    key = ctx.bodies.put(event.content.encode())
    if event.monitor_id:
        source = monitor_source(event.monitor_id)
    else:
        source = watched_source(event.source, event.selector, "content", ctx.webhook_secret.encode())
    # The content arrived as JSON text, so its bytes are UTF-8 whatever a <meta> in it says.
    content_type = f"{event.content_type}; charset=utf-8"
    return "scrape", {"source": source, "body": key, "content_type": content_type, **common}


class Ingest(BackgroundService):
    def __init__(self, broker: JetStreamBroker, ctx: Context) -> None:
        super().__init__()
        self.broker = broker
        self.ctx = ctx
        self.dead = QueueNames(broker.prefix, EVENTS_QUEUE)
        self.outage = Outage("ingest", logger)

    def declare(self) -> None:
        """Create the events stream and its consumer; declare the queues events go to."""
        for queue in ("fetch", "render", "scrape"):
            self.broker.declare_queue(queue)
        self.broker.lag({"fetch", "render", "scrape"})  # creates their streams and the dead-letter stream now
        prefix = self.broker.prefix
        js = self.broker.js
        config = StreamConfig(
            name=events_stream(prefix),
            subjects=[f"{prefix}.events.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=self.broker.storage,
            num_replicas=self.broker.replicas,
            max_msg_size=1024 * 1024 + 4096,
            duplicate_window=600,  # schedulers' slot ids stay unique for 10 minutes
        )
        self.broker.run(add_or_update_stream(js, config))
        consumer = ConsumerConfig(durable_name=CONSUMER, ack_policy=AckPolicy.EXPLICIT, ack_wait=60, max_deliver=-1)
        self.broker.run(add_consumer(js, events_stream(prefix), consumer))

    def run(self) -> None:
        """Ingest until ``stop()``; each event is acked only once its message is stored."""
        subscription = None
        while not self.stop_event.is_set():
            try:
                if subscription is None:
                    self.declare()
                    stream = events_stream(self.broker.prefix)
                    subscription = self.broker.run(self.broker.js.pull_subscribe_bind(CONSUMER, stream))
                msgs = self.broker.loop.run(subscription.fetch(64, timeout=1))
                self.outage.ok()
            except TimeoutError:
                self.outage.ok()  # an answer: no events just now
                continue
            except Exception as e:  # a server restart, a leader election: the events wait in their stream
                self.outage.failed(e)
                self.stop_event.wait(1)
                continue
            self.ingest(msgs)

    def ingest(self, msgs: list[Msg]) -> None:
        """Turn a batch of events into messages, wait once for all their stores, then ack the events.

        The checks bound for ``fetch`` go out together, up to ``MAX_CHECKS`` in one ``fetch_batch``
        message (``pipeline.stages.fetch_batch``); a check alone goes as ``fetch``'s own message.
        An event whose message was not stored (NATS or the database away) is handed back to come again.
        """
        settled: dict[str, list[Msg]] = {}  # a message's id: the events it carries
        fetches: list[_Made] = []
        try:
            with self.broker.batch():  # the publishes go out together; leaving the block waits for their acks
                for msg in msgs:
                    try:
                        made = self.handle(msg)
                    except Exception:  # NATS or the database is away: the event comes back, we go on
                        logger.warning("Could not ingest an event on %s; it comes back.", msg.subject, exc_info=True)
                        self._hand_back(msg)
                        continue
                    if made is None:
                        continue
                    if made.message.queue_name == "fetch":
                        fetches.append(made)
                    else:
                        self._send(made.message, [made.event], settled)
                for group in groups(fetches, lambda made: made.size):
                    message = group[0].message if len(group) == 1 else _fetch_batch(group)
                    self._send(message, [made.event for made in group], settled)
        except BatchPublishError as e:
            for message, _ in e.failed:
                for msg in settled.pop(message.message_id, []):
                    logger.warning("An event's job on %s was not stored; it comes back.", msg.subject)
                    self._hand_back(msg)
        events = [msg for carried in settled.values() for msg in carried]
        self.broker.run(_ack(events))
        for msg in events:
            metrics.EVENTS.labels(_kind(msg.subject), "accepted").inc()

    def _send(self, message: dramatiq.Message[Any], events: list[Msg], settled: dict[str, list[Msg]]) -> None:
        """Enqueue ``message``; its events are settled once it is stored, or come back if it cannot be."""
        try:
            self.broker.enqueue(message)
        except Exception:  # NATS away as its stream is declared: the events come back, we go on
            logger.warning("Could not store a message for %d event(s); they come back.", len(events), exc_info=True)
            for msg in events:
                self._hand_back(msg)
            return
        settled[message.message_id] = events

    def _hand_back(self, msg: Msg) -> None:
        with contextlib.suppress(Exception):
            self.broker.run(msg.nak(delay=5))

    def handle(self, msg: Msg) -> _Made | None:
        """Turn one event into its first stage's message, to send and then ack the event with, or
        dead-letter it with the reason (None: the event is settled).

        Any exception but the store being away dead-letters the event: a poison event never
        loops.  While NATS or the database is away the event comes back (``ingest`` naks it),
        up to ``MAX_DELIVERIES`` times, and is then dead-lettered with the last error.
        """
        try:
            return self._made(msg)
        except InvalidEventError as e:
            self._dead_letter(msg, e)
        except STORE_ERRORS as e:
            if msg.metadata.num_delivered < MAX_DELIVERIES:
                raise
            self._dead_letter(msg, InvalidEventError(f"gave up after {MAX_DELIVERIES} tries: {_describe(e)}"))
        except Exception as e:  # a fault of ours this event triggers: the reason, and on with the next
            logger.exception("Could not turn an event on %s into a job", msg.subject)
            self._dead_letter(msg, InvalidEventError(f"cannot ingest this event: {_describe(e)}"))
        return None

    def _made(self, msg: Msg) -> _Made:
        message_id = f"event-{msg.metadata.stream}-{msg.metadata.sequence.stream}"
        event = parse_event(msg.subject, msg.data)
        queue, job = job_for(event, self.ctx)
        job["trace"] = message_id  # one check, end to end: stages derive their message ids from it
        message = stage_message(queue, queue, job, message_id)
        size = len(message.encode())
        if size > MAX_JOB_BYTES:  # bounded by the event models; this is the last line of defence
            raise InvalidEventError(f"the job would be {size} bytes, over NATS' {MAX_JOB_BYTES} byte payload")
        return _Made(msg, message, size)

    def _dead_letter(self, msg: Msg, error: InvalidEventError) -> None:
        logger.warning("Dead-lettering an invalid event on %s: %s", msg.subject, error.reason)
        self.broker.dead_letter(self.dead, msg, "", error)
        metrics.EVENTS.labels(_kind(msg.subject), "invalid").inc()


@dataclass(frozen=True)
class _Made:
    """An event and the message made of it for its first stage."""

    event: Msg
    message: dramatiq.Message[Any]
    size: int  # encoded, in bytes


def _fetch_batch(group: list[_Made]) -> dramatiq.Message[Any]:
    """One ``fetch_batch`` message for the group's checks, under an id made of its events' ids.

    The group's events, ingested again after a crash before their ack, come back together and make the
    same id, which JetStream drops as a duplicate; regrouped otherwise, their checks run again, each
    under its own trace, which the later stages' message ids derive from.
    """
    jobs = [made.message.args[0] for made in group]
    first, last = group[0].message.message_id, group[-1].message.message_id.rsplit("-", 1)[1]
    return stage_message("fetch", "fetch_batch", jobs, f"{first}-{last}-{len(group)}")


async def _ack(msgs: list[Msg]) -> None:
    """Ack the events together: one hand-over to the loop, not one per event (an ack is fire and forget)."""
    for msg in msgs:
        await msg.ack()


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error)[:300]}"


def _kind(subject: str) -> str:
    """The event kind for a metric label: one of the known kinds, else ``other`` (labels stay bounded)."""
    kind = subject.rsplit(".", 1)[-1]
    return kind if kind in EVENT_KINDS else "other"
