"""Listing, replaying and purging dead letters (``pipeline dlq``).

Every dead letter keeps the message as it was delivered and, in headers,
why it failed, which queue it came from and the subject it was published
on.  A replay sends a check to where it can succeed now, with its retries
reset, under a new trace (so the messages it sends are never taken for
duplicates of the failed run's), and removes the dead letter:

- a monitor's check is checked as the monitor is now: the URL, selector,
  rule, question and targets the user has fixed since;
- a check that failed in scrape starts again at fetch (or render): its body
  may be gone from the object store, and its page fixed;
- one that failed in analyse is judged again (its snapshots are stored),
  one that failed in alert is delivered again, and an event the ingest
  could not take is published again as it was.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import nats.js.errors
from dramatiq.errors import DecodeError
from dramatiq.message import Message
from sqlalchemy.engine import Engine

from pipeline.broker import JetStreamBroker
from pipeline.jobs import monitor_job, stage_message, watched
from pipeline.names import dead_stream
from pipeline.redact import display_url


@dataclass(frozen=True)
class DeadLetter:
    sequence: int
    queue: str
    subject: str
    message_id: str
    reason: str
    failed_at: str
    data: bytes
    source: str  # what is watched (``monitor:42``, or the URL without credentials); "" when the letter does not say


def list_dead(
    broker: JetStreamBroker,
    queue: str | None = None,
    limit: int = 1000,
    *,
    after: int = 0,
    since: datetime | None = None,
) -> list[DeadLetter]:
    """Dead letters oldest first: at most ``limit``, with sequences above ``after`` (to page on) and,
    with ``since``, only those that failed at or after it."""
    stream = dead_stream(broker.prefix)
    subject = f"{broker.prefix}.dead.{queue or '>'}"
    letters: list[DeadLetter] = []
    sequence = after
    while len(letters) < limit:
        try:
            raw = broker.run(broker.js.get_msg(stream, seq=sequence + 1, subject=subject, next=True))
        except nats.js.errors.NotFoundError:
            break
        sequence = raw.seq
        headers = raw.headers or {}
        if since is not None and _failed_before(headers.get("Pipeline-Failed-At", ""), since):
            continue
        letters.append(DeadLetter(
            sequence=raw.seq,
            queue=headers.get("Pipeline-Queue", ""),
            subject=headers.get("Pipeline-Subject", ""),
            message_id=headers.get("Pipeline-Message-Id", ""),
            reason=headers.get("Pipeline-Dead-Reason", ""),
            failed_at=headers.get("Pipeline-Failed-At", ""),
            data=raw.data or b"",
            source=_source(raw.data or b""),
        ))  # fmt: skip
    return letters


def count_dead(broker: JetStreamBroker, queue: str | None = None) -> int:
    """How many dead letters are kept, for one queue or all."""
    if queue:
        return broker.dead_letter_count(queue)
    try:
        info = broker.run(broker.js.stream_info(dead_stream(broker.prefix)))
    except nats.js.errors.NotFoundError:
        return 0
    return info.state.messages


def _failed_before(failed_at: str, since: datetime) -> bool:
    try:
        return datetime.fromisoformat(failed_at) < since
    except ValueError:
        return False  # a letter that does not say when it failed is shown


def _source(data: bytes) -> str:
    """What a dead letter's check watches: its job's ``source``, or for an event, its monitor or URL."""
    try:
        job = Message.decode(data).args[0]
    except (DecodeError, IndexError):
        try:
            job = json.loads(data)
        except ValueError:
            return ""
        if not isinstance(job, dict):
            return ""
        if job.get("monitor_id"):
            return f"monitor:{job['monitor_id']}"
        if isinstance(job.get("url"), str):
            return display_url(job["url"])
    if isinstance(job, dict) and isinstance(job.get("source"), str):
        return job["source"]
    return ""


def replay(broker: JetStreamBroker, letter: DeadLetter, engine: Engine | None = None) -> str:
    """Send a dead letter's check again where it can succeed now (see the module's text), then remove the letter.

    ``engine``: the database, to check a monitor's check as the monitor is now (without: as it was).
    Returns the queue it went to.  Raises ``ValueError`` when the letter does not say where it came from
    or its monitor was removed.
    """
    if not letter.subject:
        raise ValueError(f"dead letter {letter.sequence} does not say where it came from")
    subject, data = letter.subject, letter.data
    if subject.startswith(f"{broker.prefix}.q."):
        try:
            message = Message.decode(data)
        except DecodeError:
            message = None
        if message is not None and message.args and isinstance(message.args[0], dict):  # one check
            queue, job = _restarted(letter.queue, message.args[0], engine, letter.sequence)
            broker.enqueue(stage_message(queue, queue, job, f"{job['trace']}-{queue}"))
            broker.run(broker.js.delete_msg(dead_stream(broker.prefix), letter.sequence))
            return queue
        if message is not None:  # a whole batch (its retries ran out): as it was, with its retries back
            message.options.pop("retries", None)
            message.options.pop("traceback", None)
            data = message.encode()
    headers = {"Nats-Msg-Id": f"replay-{letter.sequence}-{letter.message_id}"}
    broker.run(broker.js.publish(subject, data, headers=headers))
    broker.run(broker.js.delete_msg(dead_stream(broker.prefix), letter.sequence))
    return letter.queue


#: What a replay adds to a check's trace (its stages' message ids derive from it), in place of an earlier one's.
_REPLAYED = re.compile(r"-replay\d+$")


def _restarted(queue: str, job: dict[str, Any], engine: Engine | None, sequence: int) -> tuple[str, dict[str, Any]]:
    """Where a check that died in ``queue`` goes again, and its job there."""
    job = dict(job)
    first = "render" if "wait_for" in job else "fetch"
    source = job.get("source", "")
    if engine is not None and source.startswith("monitor:") and queue != "alert":  # an alert's target is its own
        from pipeline.queries import get_monitor

        monitor = get_monitor(engine, int(source.removeprefix("monitor:")))
        if monitor is None:
            raise ValueError(f"{source} was removed: there is nothing to check again (`pipeline dlq purge` drops it)")
        first, now = monitor_job(monitor)
        if job.get("url"):  # fetched: all of it as it is now; pushed content keeps what was pushed
            job.pop("wait_for", None)
            job.update(now)
        else:
            job.update({key: now[key] for key in ("selector", "rule", "question", "notify")})
    if queue in ("fetch", "render", "scrape") and job.get("url"):
        queue, job = first, dict(watched(job))  # type: ignore[arg-type]
    job["trace"] = _REPLAYED.sub("", job.get("trace") or "check") + f"-replay{sequence}"
    return queue, job


def purge(broker: JetStreamBroker, queue: str | None = None) -> None:
    subject = f"{broker.prefix}.dead.{queue}" if queue else None
    broker.run(broker.js.purge_stream(dead_stream(broker.prefix), subject=subject))
