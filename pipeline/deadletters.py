"""Listing, replaying and purging dead letters (``pipeline dlq``).

Every dead letter keeps the message as it was delivered and, in headers,
why it failed, which queue it came from and the subject it was published
on, so a replay puts it back exactly where it was, with its retry count
reset.  A replayed dead letter is removed from the dead-letter stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import nats.js.errors
from dramatiq.errors import DecodeError
from dramatiq.message import Message

from pipeline.broker import JetStreamBroker
from pipeline.names import dead_stream


@dataclass(frozen=True)
class DeadLetter:
    sequence: int
    queue: str
    subject: str
    message_id: str
    reason: str
    failed_at: str
    data: bytes


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


def replay(broker: JetStreamBroker, letter: DeadLetter) -> None:
    """Publish a dead letter again where it came from, then remove it."""
    data = letter.data
    if letter.subject.startswith(f"{broker.prefix}.q."):
        try:  # a Dramatiq message: give it its retries back
            message = Message.decode(data)
            message.options.pop("retries", None)
            message.options.pop("traceback", None)
            data = message.encode()
        except DecodeError:
            pass
    if not letter.subject:
        raise ValueError(f"dead letter {letter.sequence} does not say where it came from")
    headers = {"Nats-Msg-Id": f"replay-{letter.sequence}-{letter.message_id}"}
    broker.run(broker.js.publish(letter.subject, data, headers=headers))
    broker.run(broker.js.delete_msg(dead_stream(broker.prefix), letter.sequence))


def purge(broker: JetStreamBroker, queue: str | None = None) -> None:
    subject = f"{broker.prefix}.dead.{queue}" if queue else None
    broker.run(broker.js.purge_stream(dead_stream(broker.prefix), subject=subject))
