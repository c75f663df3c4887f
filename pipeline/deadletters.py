"""Listing, replaying and purging dead letters (``pipeline dlq``).

Every dead letter keeps the message as it was delivered and, in headers,
why it failed, which queue it came from and the subject it was published
on.  A replay sends a check to where it can succeed now, with its retries
reset, under a new trace (so the messages it sends are never taken for
duplicates of the failed run's), and removes the dead letter:

- a check that failed in fetch, render or scrape is fetched again (a
  scrape failure's body may be gone from the object store, and its page
  fixed); a monitor's goes as a monitor event, so the ingest checks it as
  the monitor is now (``pipeline monitor edit``), or dead-letters it with
  the reason if the monitor was removed;
- one that failed in analyse or alert is judged again from its stored
  snapshots, marked ``replayed``: the analyse stage then reads its monitor's
  rule, question and targets as they are now, and alerts only the targets
  not yet sent to;
- an event the ingest could not take is published again as it was.

The workers, not this command, read the monitors: they use the pipeline's
database, whatever database this shell's settings name.
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

from pipeline.broker import JetStreamBroker
from pipeline.jobs import AnalyseJob, monitor_of, monitor_source, stage_message, watched
from pipeline.names import dead_stream, event_subject
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
    message = _decoded(data)
    if message is not None and message.args:
        job = message.args[0]
    else:  # an event the ingest could not take
        try:
            job = json.loads(data)
        except ValueError:
            return ""
        if not isinstance(job, dict):
            return ""
        if job.get("monitor_id"):
            return monitor_source(job["monitor_id"])
        if isinstance(job.get("url"), str):
            return display_url(job["url"])
    if isinstance(job, dict) and isinstance(job.get("source"), str):
        return job["source"]
    return ""


def replay(broker: JetStreamBroker, letter: DeadLetter) -> str:
    """Send a dead letter's check again where it can succeed now (see the module's text), then remove the letter.

    Returns where it went: a queue, or ``events`` for a monitor's check.  Raises ``ValueError`` when the
    letter does not say where it came from.  A letter replayed twice at once is sent once.
    """
    if not letter.subject:
        raise ValueError(f"dead letter {letter.sequence} does not say where it came from")
    subject, data = letter.subject, letter.data
    went = letter.queue
    message = _decoded(data) if subject.startswith(f"{broker.prefix}.q.") else None
    if message is not None and message.args and isinstance(message.args[0], dict):  # one check
        went, again = _restarted(broker, letter, message.args[0])
        if isinstance(again, Message):  # its id is the same for the same letter: replayed twice, sent once
            broker.enqueue(again)
        else:
            subject, data = again
            _publish(broker, letter, subject, data)
    else:
        if message is not None:  # a whole batch (its retries ran out): as it was, with its retries back
            message.options.pop("retries", None)
            message.options.pop("traceback", None)
            data = message.encode()
        _publish(broker, letter, subject, data)
    _delete(broker, letter.sequence)  # already gone: replayed at the same moment by another command
    return went


def _decoded(data: bytes) -> Message[Any] | None:
    try:
        return Message.decode(data)
    except DecodeError:
        return None


def _publish(broker: JetStreamBroker, letter: DeadLetter, subject: str, data: bytes) -> None:
    """Publish as the letter's replay: the same id for the same letter, so JetStream keeps one of two replays."""
    broker.run(
        broker.js.publish(subject, data, headers={"Nats-Msg-Id": f"replay-{letter.sequence}-{letter.message_id}"})
    )


def _delete(broker: JetStreamBroker, sequence: int) -> bool:
    """Delete a dead letter; False when there is none of ``sequence``."""
    try:
        broker.run(broker.js.delete_msg(dead_stream(broker.prefix), sequence))
    except nats.js.errors.APIError as e:
        if isinstance(e, nats.js.errors.NotFoundError) or e.err_code == NO_MESSAGE_FOUND:
            return False
        raise
    return True


#: JetStream's error code for a sequence the stream does not hold.
NO_MESSAGE_FOUND = 10057


#: What a replay adds to a check's trace (its stages' message ids derive from it), in place of an earlier one's.
_REPLAYED = re.compile(r"-replay\d+$")


def _restarted(
    broker: JetStreamBroker, letter: DeadLetter, job: dict[str, Any]
) -> tuple[str, Message[Any] | tuple[str, bytes]]:
    """Where the check of a letter from a stage's queue goes again (a queue, or ``events``), and its message
    there (or, for an event, its subject and data)."""
    monitor_id, queue = monitor_of(job.get("source", "")), letter.queue
    fetched = bool(job.get("url"))
    if queue in ("fetch", "render", "scrape") and fetched and monitor_id is not None:
        event = {"monitor_id": monitor_id}
        return "events", (event_subject("monitor", broker.prefix), json.dumps(event).encode())
    if queue in ("fetch", "render", "scrape") and fetched:
        queue, job = ("render" if "wait_for" in job else "fetch"), dict(watched(job))  # type: ignore[arg-type]
    elif queue in ("analyse", "alert"):
        job = {key: value for key, value in job.items() if key in AnalyseJob.__annotations__}
        queue, job["replayed"] = "analyse", True
    job["trace"] = _REPLAYED.sub("", job.get("trace") or "check") + f"-replay{letter.sequence}"
    return queue, stage_message(queue, queue, job, f"{job['trace']}-{queue}")


def delete(broker: JetStreamBroker, sequences: list[int]) -> list[int]:
    """Delete the dead letters of ``sequences``; those there was none of."""
    return [sequence for sequence in sequences if not _delete(broker, sequence)]


def purge(broker: JetStreamBroker, queue: str | None = None) -> None:
    subject = f"{broker.prefix}.dead.{queue}" if queue else None
    broker.run(broker.js.purge_stream(dead_stream(broker.prefix), subject=subject))
