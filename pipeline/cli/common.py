"""What every command shares: one error style, the broker and database connections, output helpers."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

import typer

from pipeline.nats_server import embedded_url, running_url
from pipeline.settings import Settings, configure, current

#: A command line gives up on NATS sooner than a worker, which waits for a server that is starting.
CONNECT_TIMEOUT = 3.0


class CommandError(Exception):
    """A failure the user can act on: printed as one line, ``error: <message>``, with ``code`` (1 or 2)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def fail(message: str, code: int = 1) -> NoReturn:
    """Stop the command: 1 for what could not be done, 2 for bad input."""
    raise CommandError(message, code)


def bad_input(message: str) -> NoReturn:
    fail(message, 2)


def settings() -> Settings:
    """This command's settings, loaded once when it started (``pipeline.settings``)."""
    return current()


def nats_url(*, start: bool = True) -> str:
    """``PIPELINE_NATS_URL``, or the embedded server of this home: started if it is not running, or, with
    ``start=False`` (commands that look at a running pipeline), ``error: no pipeline is running here``."""
    url = settings().nats.url
    if not url and not start:
        url = running_url(settings().home)
        if url is None:
            fail(
                f"no pipeline is running here ({settings().home}/nats.json): start `pipeline up`, "
                "or set PIPELINE_NATS_URL"
            )
    url = url or embedded_url(settings().home)
    use_nats_url(url)
    return url


def use_nats_url(url: str) -> None:
    """Make ``url`` this process's NATS: the actors it imports and the workers it starts connect there."""
    configure(settings().model_copy(update={"nats": settings().nats.model_copy(update={"url": url})}))


def connected_broker(*queues: str, start: bool = False) -> Any:
    """A broker, connected now (or ``error: cannot reach NATS ...`` within seconds).

    The stage queues are declared; no actors are imported.  Without ``PIPELINE_NATS_URL`` it is the
    running pipeline's embedded server; ``start`` starts one when none runs (long-running commands).
    """
    from dramatiq.errors import ConnectionFailed

    from pipeline.broker import JetStreamBroker
    from pipeline.names import STAGES

    broker = JetStreamBroker(nats_url(start=start), prefix=settings().prefix, connect_timeout=CONNECT_TIMEOUT)
    for queue in queues or STAGES:
        broker.declare_queue(queue)
    try:
        broker.js  # noqa: B018 - connects now, so an outage is one clear line before anything else
    except ConnectionFailed as e:
        broker.close()
        fail(str(e))
    return broker


def engine() -> Any:
    """The database, migrated: once per URL and process (`up` asks every few seconds)."""
    return _migrated_engine(settings().database_url())


@functools.cache
def _migrated_engine(url: str) -> Any:
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

    from pipeline.db import make_engine, migrate

    try:
        database = make_engine(url)
    except (ArgumentError, NoSuchModuleError) as e:
        bad_input(f"PIPELINE_DATABASE_URL: {e}")
    try:
        migrate(database)
    except OperationalError as e:
        fail(f"cannot use the database at {database.url.render_as_string(hide_password=True)}: {e.orig}")
    return database


def read_bytes(source: str, limit: int | None = None) -> bytes:
    """The bytes of a file the user named, or of stdin for ``-``; unreadable is bad input (exit 2).

    With ``limit``, at most ``limit + 1`` bytes are read: the caller tells a file over it by its length.
    """
    size = -1 if limit is None else limit + 1
    if source == "-":
        return sys.stdin.buffer.read(size)
    try:
        with open(source, "rb") as file:
            return file.read(size)
    except OSError as e:
        bad_input(f"cannot read {source}: {e.strerror}")


def echo_json(value: Any) -> None:
    typer.echo(json.dumps(value, default=str))


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Rows under a header line, columns aligned; nothing at all when there are no rows."""
    cells = [[str(cell) for cell in row] for row in rows]
    if not cells:
        return
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(headers)]
    for row in [list(headers), *cells]:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


JSON_OPTION = typer.Option(False, "--json", help="Print JSON.")
#: A monitor's id: a 64-bit SQL integer, so a longer number is bad input, not a database error.
MONITOR_ID = typer.Argument(..., min=1, max=2**63 - 1, help="The monitor's id.")
