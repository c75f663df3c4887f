"""Group commit: what many threads write, in one transaction per turn.

A worker's threads each end a message with a small write: a check's row
(fetch), a snapshot (scrape), a finding (analyse), an alert's claim and its
outcome (alert).  A transaction each cost more than the rest of the message,
and on SQLite every transaction of every process waits for the one writer's
turn: woken threads queued on that turn more than they worked.  Here a thread
adds its write and waits for the turn; whoever has it writes everything
waiting, its own and what the threads queued behind it added, in one
transaction.  A thread returns only once its write is committed (or raises
what stopped it), so a message is still acknowledged after its write is
stored, never before: what PostgreSQL's and InnoDB's group commit do for
their own log, done one level up.

A write is a row for a table (rows for one table go in one ``executemany``)
or a unit of work, a function of the connection whose result its thread gets
back (a new row's id).  If the transaction fails, each write is tried again
in a transaction of its own, so only a write at fault fails, with its own
error (an ``IntegrityError`` for a row already there, say): units must
therefore do nothing but their database statements.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.engine import Connection, Engine
from sqlmodel import SQLModel

from pipeline.db import inserting, transaction

T = TypeVar("T")

#: A unit of work: database statements on the connection it is given, and what its thread gets back.
Unit = Callable[[Connection], Any]


@dataclass(frozen=True)
class _Row:
    table: type[SQLModel]
    values: dict[str, Any]


_Write = tuple[_Row | Unit, "Future[Any]"]


class GroupCommit:
    """Rows and units of work from any thread, many per transaction; thread-safe."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._waiting: list[_Write] = []
        self._waiting_lock = threading.Lock()
        self._turn = threading.Lock()  # the writer's turn: one transaction at a time

    def insert(self, table: type[SQLModel], row: dict[str, Any]) -> None:
        """Insert ``row`` (column values) into ``table``; returns once it is committed.

        Raises what the database raised for it.
        """
        self._submit(_Row(table, row))

    def run(self, unit: Callable[[Connection], T]) -> T:
        """Run ``unit`` in a transaction shared with other threads' writes; its result once committed.

        Raises what ``unit`` raised, or what the database raised for it, in a transaction of its own.
        """
        result: T = self._submit(unit)
        return result

    def _submit(self, write: _Row | Unit) -> Any:
        done: Future[Any] = Future()
        with self._waiting_lock:
            self._waiting.append((write, done))
        with self._turn:
            if not done.done():  # nobody wrote it while this thread queued for its turn: write all that waits
                self._write()
        return done.result()

    def _write(self) -> None:
        with self._waiting_lock:
            batch, self._waiting = self._waiting, []
        try:
            self._commit(batch)
        except BaseException:  # this thread was interrupted (Dramatiq's time limit, shutdown): the rest still wait
            with self._waiting_lock:
                self._waiting[:0] = [(write, done) for write, done in batch if not done.done()]
            raise

    def _commit(self, batch: list[_Write]) -> None:
        """One transaction for the batch; if it fails, one per write, so only a write at fault fails."""
        rows: dict[type[SQLModel], list[dict[str, Any]]] = {}
        results: list[Any] = []
        try:
            with transaction(self.engine) as db:
                for write, _ in batch:
                    if isinstance(write, _Row):
                        rows.setdefault(write.table, []).append(write.values)
                        results.append(None)
                    else:
                        results.append(write(db))
                for table, values in rows.items():
                    db.execute(inserting(table), values)
        except Exception as e:
            if len(batch) == 1:
                batch[0][1].set_exception(e)
                return
            for each in batch:
                self._commit([each])
            return
        for (_, done), result in zip(batch, results, strict=True):
            done.set_result(result)
