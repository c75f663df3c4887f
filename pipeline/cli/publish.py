"""``pipeline publish``: hand the pipeline an event and wait until JetStream has stored it.

A plain NATS publish is fire-and-forget: while the events stream has no
leader (a server restarting, an election in a cluster) it is dropped without
a word.  A JetStream publish is answered by the stream once the event is
stored, so this command exits 0 only when it is, and 1 with the reason when
it is not.  The event is validated here first (exit 2), as the ingest would.
"""

from __future__ import annotations

import sys

import typer
from nats.js.api import PubAck

from pipeline.cli.common import bad_input, connected_broker, fail, settings, use_nats_url


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
    _find_running_pipeline()
    stored = _publish(subject, data)
    typer.echo(f"stored as {stored.stream} #{stored.seq}")


def _read(event: str, limit: int) -> bytes:
    if event == "-":
        data = sys.stdin.buffer.read(limit + 1)
    elif event.startswith("@"):
        try:
            with open(event[1:], "rb") as file:
                data = file.read(limit + 1)
        except OSError as e:
            bad_input(f"cannot read {event[1:]}: {e.strerror}")
    else:
        data = event.encode()
    if len(data) > limit:
        bad_input(f"the event is over the {limit} byte limit")
    return data


def _find_running_pipeline() -> None:
    """Without ``PIPELINE_NATS_URL``, the embedded server of a running ``pipeline up`` here; none is started."""
    from pipeline.nats_server import running_url

    if not settings().nats.url:
        url = running_url(settings().home)
        if url is None:
            home = settings().home
            fail(f"no pipeline is running here ({home}/nats.json): start `pipeline up`, or set PIPELINE_NATS_URL")
        use_nats_url(url)


def _publish(subject: str, data: bytes) -> PubAck:
    import nats.errors
    import nats.js.errors
    from dramatiq.errors import ConnectionClosed

    broker = connected_broker()
    try:
        try:
            return broker.run(broker.js.publish(subject, data, timeout=5))
        except (nats.js.errors.NoStreamResponseError, nats.errors.NoRespondersError, ConnectionClosed) as e:
            try:  # nobody answered: no stream at all, or one without a leader just now?
                broker.run(broker.js.find_stream_name_by_subject(subject), timeout=5)
            except nats.js.errors.NotFoundError:
                fail(f"no stream stores {subject}: has `pipeline up` or `pipeline scheduler` run against this NATS?")
            except Exception:
                pass  # the stream cannot be asked about either: the outage is the reason
            fail(f"the event was not stored: {type(e).__name__} (the events stream may be electing a leader; retry)")
    finally:
        broker.close()
