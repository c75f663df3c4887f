"""Group commit: rows that many threads insert into one table, written together in one transaction.

A fetch worker ends most checks with one row in ``checks`` (unchanged, not
modified, an error) from dozens of threads; a commit each cost more than the
rest of the check.  Here a thread adds its row and waits for the writer's
turn; whoever has the turn writes every row waiting, its own and those of the
threads queued behind it, in one transaction.  A thread returns only once its
row is committed (or raises the error that stopped the commit), so a message
is still acknowledged after its row is stored, never before: what
PostgreSQL's and InnoDB's group commit do for their own log, done one level up.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from pipeline.db import inserting, transaction


class GroupCommit:
    """Inserts rows into ``table`` from any thread, many per transaction; thread-safe."""

    def __init__(self, engine: Engine, table: type[SQLModel]) -> None:
        self.engine = engine
        self.statement = inserting(table)
        self._waiting: list[tuple[dict[str, Any], Future[None]]] = []
        self._waiting_lock = threading.Lock()
        self._turn = threading.Lock()  # the writer's turn: one transaction at a time

    def insert(self, row: dict[str, Any]) -> None:
        """Insert ``row`` (column values); returns once it is committed.

        Raises what the database raised for the transaction that held it.
        """
        done: Future[None] = Future()
        with self._waiting_lock:
            self._waiting.append((row, done))
        with self._turn:
            if not done.done():  # nobody wrote it while this thread queued for its turn: write all that waits
                self._write()
        done.result()

    def _write(self) -> None:
        with self._waiting_lock:
            batch, self._waiting = self._waiting, []
        try:
            self._commit(batch)
        except BaseException:  # this thread was interrupted (Dramatiq's time limit, shutdown): the rest still wait
            with self._waiting_lock:
                self._waiting[:0] = [(row, done) for row, done in batch if not done.done()]
            raise

    def _commit(self, batch: list[tuple[dict[str, Any], Future[None]]]) -> None:
        """One transaction for the batch; if it fails, one per row, so only a row at fault fails."""
        try:
            with transaction(self.engine) as db:
                db.execute(self.statement, [row for row, _ in batch])
        except Exception as e:
            if len(batch) == 1:
                batch[0][1].set_exception(e)
                return
            for row, done in batch:
                self._commit([(row, done)])
            return
        for _, done in batch:
            done.set_result(None)
