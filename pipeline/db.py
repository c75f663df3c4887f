"""The database: SQLite (WAL) under ``.pipeline/`` by default, PostgreSQL via ``PIPELINE_DATABASE_URL``.

The schema is Alembic's to manage (``pipeline/migrations``): ``migrate()``
brings any database to the latest revision, and every process calls it on
start-up, so a fresh machine needs no separate step.
"""

from __future__ import annotations

import fcntl
import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Insert, event, insert, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlmodel import SQLModel, create_engine

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class _SQLiteWriters:
    """The turn to write to one SQLite database: a lock among this process's threads, then a
    lock file (``<database>.write-lock``, ``flock``) among processes, whose waiters the kernel
    wakes the moment it is free.  Both are made anew in a forked child: a descriptor inherited
    across ``fork`` shares its lock with the parent, and a thread lock may be copied taken."""

    def __init__(self, database: str | None) -> None:
        self.path = f"{database}.write-lock" if database and database != ":memory:" else None
        self.threads = threading.Lock()
        self._descriptor: int | None = None

    def forked(self) -> None:
        self.threads = threading.Lock()
        if self._descriptor is not None:  # closing a copy leaves the parent's lock alone (flock(2))
            os.close(self._descriptor)
            self._descriptor = None

    @contextmanager
    def turn(self) -> Iterator[None]:
        with self.threads:
            if self.path is None:
                yield
                return
            if self._descriptor is None:
                self._descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            descriptor = self._descriptor
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(descriptor, fcntl.LOCK_UN)


_SQLITE_WRITERS: weakref.WeakKeyDictionary[Engine, _SQLiteWriters] = weakref.WeakKeyDictionary()


def _forked() -> None:
    for writers in list(_SQLITE_WRITERS.values()):
        writers.forked()


os.register_at_fork(after_in_child=_forked)


def make_engine(url: str) -> Engine:
    """An engine for ``url`` (``Settings.database_url()``); ``postgresql://`` means psycopg 3."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):  # SQLAlchemy would look for psycopg2; psycopg 3 is what we install
            url = "postgresql+psycopg://" + url.removeprefix(plain)
    if url.startswith("sqlite"):
        # A pool as large as a busy worker's threads (a fetch process's 64): each connection made anew costs a
        # connect and its pragmas.
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=64, max_overflow=96
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection, _record) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        _SQLITE_WRITERS[engine] = _SQLiteWriters(engine.url.database)
        return engine
    # Sessions in UTC whatever the server's default: the columns hold UTC wall time without a zone, and an
    # aware datetime is stored as the session's local time.  Added to the URL's own ``options`` (a search_path,
    # say), which a connect argument of that name would replace.
    parsed = make_url(url)
    given = parsed.query.get("options") or ()
    options = " ".join((*((given,) if isinstance(given, str) else given), "-c timezone=UTC"))
    return create_engine(parsed.update_query_dict({"options": options}), pool_pre_ping=True, pool_size=5,
                         max_overflow=10)  # fmt: skip


@cache
def inserting(table: type[SQLModel]) -> Insert:
    """The INSERT statement of ``table``, built once: building it, then its cache key, cost more than running it."""
    return insert(table)


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """``engine.begin()`` for a transaction that writes: committed on leaving, rolled back on an error.

    SQLite takes one writer at a time, and a connection that finds the write lock taken
    sleeps in SQLite's busy handler (1, 2, 5 ... 100 ms between tries), not until the lock
    is free: a fetch worker's 128 threads each committing its check's row spent more time
    asleep there than working (420 unchanged checks per second, 670 with half the rows).
    So SQLite writers wait for their turn here (:class:`_SQLiteWriters`), woken as soon as
    it comes.  PostgreSQL's row locks need no such help.
    """
    writers = _SQLITE_WRITERS.get(engine)
    if writers is None:
        with engine.begin() as connection:
            yield connection
        return
    with writers.turn(), engine.begin() as connection:
        yield connection


#: The newest migration's revision: a database already there needs no Alembic at all (a test holds this
#: equal to Alembic's head), which spares every worker process importing it at start.
HEAD_REVISION = "0005"


def alembic_config(engine: Engine) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def migrate(engine: Engine) -> None:
    """Upgrade the database to the latest schema (idempotent; safe when workers start together)."""
    if _revision(engine) == HEAD_REVISION:
        return
    from alembic import command

    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(7301)"))  # held by this connection
            try:
                command.upgrade(alembic_config(engine), "head")
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(7301)"))
                connection.commit()
        return
    database = engine.url.database
    lock_path = Path(f"{database}.migrate-lock") if database and database != ":memory:" else None
    if lock_path is None:
        command.upgrade(alembic_config(engine), "head")
        return
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            command.upgrade(alembic_config(engine), "head")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _revision(engine: Engine) -> str | None:
    """The schema revision Alembic recorded, or None (a new database)."""
    try:
        with engine.connect() as connection:
            return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except DBAPIError:  # no such table yet
        return None
