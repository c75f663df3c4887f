"""``pipeline publish``: hand the pipeline an event and wait until JetStream has stored it.

A plain NATS publish is fire-and-forget: while the events stream has no
leader (a server restarting, an election in a cluster) it is dropped without
a word.  A JetStream publish is answered by the stream once the event is
stored, so this command exits 0 only when it is, and 1 with the reason when
it is not.  The event is validated here first (exit 2), as the ingest would.
"""

from __future__ import annotations

from typing import Any

import typer
from nats.js.api import PubAck

from pipeline.cli.common import bad_input, connected_broker, fail, read_bytes, settings

#: Seconds ``pipeline publish`` keeps trying while NATS or the events stream's leader is away.
PATIENCE = 15.0


def publish(
    kind: str = typer.Argument(..., help="check | monitor | content"),
    event: str = typer.Argument(..., help="The event: JSON, @FILE, or - to read it from stdin."),
) -> None:
    """Publish an event (docs/schemas/) and wait until JetStream has stored it."""
    from pipeline.events import MAX_EVENT_BYTES, InvalidEventError, parse_event
    from pipeline.names import EVENT_KINDS, event_subject

    if kind not in EVENT_KINDS:
        bad_input(f"no event kind {kind!r}: the kinds are {', '.join(EVENT_KINDS)}")
    data = _read(event, MAX_EVENT_BYTES)
    subject = event_subject(kind, settings().prefix)
    try:
        parse_event(subject, data)
    except InvalidEventError as e:
        bad_input(e.reason)
    stored = _publish(subject, data)
    typer.echo(f"stored as {stored.stream} #{stored.seq}")


def _read(event: str, limit: int) -> bytes:
    if event == "-":
        data = read_bytes("-", limit)
    elif event.startswith("@"):
        data = read_bytes(event[1:], limit)
    else:
        data = event.encode()
    if len(data) > limit:
        bad_input(f"the event is over the {limit} byte limit")
    return data


def _publish(subject: str, data: bytes) -> PubAck:
    """Publish until JetStream acknowledges the event, for up to ``PATIENCE`` seconds.

    Every attempt carries the same ``Nats-Msg-Id``, so an attempt that was stored although its
    acknowledgement was lost is dropped as a duplicate: an event is stored once, however many tries.
    """
    import time
    import uuid

    import nats.errors
    import nats.js.errors
    from dramatiq.errors import ConnectionClosed

    broker = connected_broker()
    headers = {"Nats-Msg-Id": f"publish-{uuid.uuid4().hex}"}
    deadline = time.monotonic() + PATIENCE
    try:
        while True:
            try:
                return broker.run(broker.js.publish(subject, data, timeout=3, headers=headers))
            except (nats.errors.Error, ConnectionClosed) as e:
                if _no_stream(broker, subject):
                    fail(
                        f"no stream stores {subject}: has `pipeline up` or `pipeline scheduler` run against this NATS?"
                    )
                if time.monotonic() > deadline:
                    fail(f"the event was not stored within {PATIENCE:g} s: {type(e).__name__} (NATS or the events "
                         "stream's leader is away); publish it again")  # fmt: skip
                time.sleep(0.5)  # a leader election takes seconds
    finally:
        broker.close()


def _no_stream(broker: Any, subject: str) -> bool:
    """Whether JetStream says no stream captures ``subject`` (False when it cannot be asked either)."""
    import nats.js.errors

    try:
        broker.run(broker.js.find_stream_name_by_subject(subject), timeout=3)
    except nats.js.errors.NotFoundError:
        return True
    except Exception:  # the outage is the reason, not a missing stream
        return False
    return False
