"""``pipeline dlq``: list, replay and purge dead letters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import typer

from pipeline.cli.common import JSON_OPTION, bad_input, connected_broker, echo_json, fail, table

app = typer.Typer(help="Dead letters: list, replay, purge.", no_args_is_help=True)

QUEUE_HELP = "Only this queue (events: events the ingest could not take)."
AGES = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@app.command("list")
def list_(
    queue: str = typer.Option(None, help=QUEUE_HELP),
    limit: int = typer.Option(100, min=1, help="Show at most this many."),
    since: str = typer.Option(
        None, help="Only after this: a sequence number (the last one shown, to page on), a time, or an age (30m, 2h)."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Dead letters, oldest first, with why they failed; says how many there are in all (on stderr)."""
    from pipeline.deadletters import count_dead, list_dead

    after, since_time = _since(since)
    broker = _broker(queue)
    try:
        letters = list_dead(broker, queue, limit, after=after, since=since_time)
        total = count_dead(broker, queue)
    finally:
        broker.close()
    if as_json:
        keys = ("sequence", "queue", "source", "subject", "message_id", "reason", "failed_at")
        echo_json([{k: getattr(letter, k) for k in keys} for letter in letters])
    else:
        table(["SEQUENCE", "FAILED AT", "QUEUE", "SOURCE", "REASON"],
              ([letter.sequence, letter.failed_at, letter.queue, _short(letter.source) or "-", letter.reason]
               for letter in letters))  # fmt: skip
    shown = f"{len(letters)} of {total} dead letter(s)" + (f" of {queue}" if queue else "")
    more = f"; next page: --since {letters[-1].sequence}" if len(letters) == limit else ""
    typer.echo(f"{shown}{more}", err=True)


@app.command("replay")
def replay(
    sequences: list[int] = typer.Argument(
        None, min=1, help="Dead letters to replay (default: all, or all of --queue)."
    ),
    queue: str = typer.Option(None, help=QUEUE_HELP),
) -> None:
    """Check dead letters' checks again, with their retries reset, as their monitors are now.

    A check that failed in fetch, render or scrape is fetched again (a monitor's, as the monitor is now:
    `pipeline monitor edit`); one that failed in analyse or alert is judged again with its monitor's rule
    and targets as they are now; an event is ingested again.
    """
    from pipeline import deadletters

    broker = _broker(queue)
    refused: list[str] = []
    try:
        letters = deadletters.list_dead(broker, queue, limit=100_000)
        chosen = [letter for letter in letters if not sequences or letter.sequence in sequences]
        for letter in chosen:
            try:
                deadletters.replay(broker, letter)
            except ValueError as e:  # a letter that does not say where it came from: the others go on
                refused.append(str(e))
    finally:
        broker.close()
    typer.echo(f"replayed {len(chosen) - len(refused)}")
    if refused:
        fail("\n".join(refused))
    missing = set(sequences or ()) - {letter.sequence for letter in chosen}
    if missing:
        bad_input(f"no dead letter {', '.join(map(str, sorted(missing)))}")


@app.command("purge")
def purge(
    sequences: list[int] = typer.Argument(
        None, min=1, help="Dead letters to delete (default: all, or all of --queue)."
    ),
    queue: str = typer.Option(None, help=QUEUE_HELP),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask."),
) -> None:
    """Delete dead letters for good."""
    from pipeline import deadletters

    if not yes:
        what = f"dead letter(s) {', '.join(map(str, sequences))}" if sequences else "the dead letters of "
        what += "" if sequences else queue or "every queue"
        typer.confirm(f"Delete {what}?", abort=True)
    broker = _broker(queue)
    try:
        if sequences:
            missing = deadletters.delete(broker, sequences)
            typer.echo(f"deleted {len(sequences) - len(missing)}")
        else:
            deadletters.purge(broker, queue)
            missing = []
            typer.echo(f"deleted the dead letters of {queue or 'every queue'}")
    finally:
        broker.close()
    if missing:
        bad_input(f"no dead letter {', '.join(map(str, missing))}")


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _broker(queue: str | None) -> Any:
    """The broker, after checking the queue's name: an unknown one is bad input, not an empty list."""
    from pipeline.names import EVENTS_QUEUE, STAGES

    if queue is not None and queue not in (*STAGES, EVENTS_QUEUE):
        bad_input(f"no queue {queue!r}: the queues are {', '.join((*STAGES, EVENTS_QUEUE))}")
    return connected_broker()


def _since(value: str | None) -> tuple[int, datetime | None]:
    """``--since``: (sequence to page after, earliest failure time); a bad value is bad input."""
    if value is None:
        return 0, None
    value = value.strip()
    if value.isdigit():
        if int(value) >= 2**63:  # JetStream's sequences are 64-bit
            bad_input(f"--since {value} is past any sequence a stream can have")
        return int(value), None
    if value[:-1].isdigit() and value[-1:] in AGES:
        return 0, datetime.now(UTC) - timedelta(seconds=int(value[:-1]) * AGES[value[-1]])
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        bad_input(f"--since takes a sequence number, a time (2026-11-30T12:00) or an age (30m, 2h, 1d), not {value!r}")
    return 0, when if when.tzinfo else when.replace(tzinfo=UTC)
