"""The schema on a real SQLite, and on PostgreSQL when PIPELINE_TEST_POSTGRES_URL is set."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from pipeline.db import make_engine, migrate
from pipeline.models import Alert, Finding, Monitor, Snapshot


def test_migrations_create_every_table_and_index(db_engine: Engine) -> None:
    engine = db_engine
    inspector = inspect(engine)
    tables = set(inspector.get_table_names())
    assert {"monitors", "snapshots", "checks", "findings", "alerts", "deliveries", "alembic_version"} <= tables
    assert "ix_monitors_due" in {index["name"] for index in inspector.get_indexes("monitors")}
    migrate(engine)  # idempotent


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'wal.db'}")
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    engine.dispose()


def test_due_monitors_are_found(db_engine: Engine) -> None:
    engine = db_engine
    now = datetime.now(UTC)
    with Session(engine) as session:
        session.add(Monitor(name="due", url="https://a.example", next_check_at=now - timedelta(minutes=1)))
        session.add(Monitor(name="later", url="https://b.example", next_check_at=now + timedelta(hours=1)))
        session.add(Monitor(name="paused", url="https://c.example", paused=True, next_check_at=now))
        session.commit()
        due = session.exec(select(Monitor).where(Monitor.paused == False, Monitor.next_check_at <= now)).all()  # noqa: E712
    assert [m.name for m in due] == ["due"]
    assert due[0].next_check_at.tzinfo is not None


def test_a_change_gets_one_finding_and_a_target_one_alert(db_engine: Engine) -> None:
    engine = db_engine
    with Session(engine) as session:
        snapshot = Snapshot(source="monitor:1", content_hash="ab" * 32, text="price 95")
        session.add(snapshot)
        session.commit()
        finding = Finding(
            snapshot_id=snapshot.id,
            source="monitor:1",
            content_hash="ab" * 32,
            analyser="rules",
            relevant=True,
            severity="warning",
            summary="price is 95",
            evidence=["95"],
        )
        session.add(finding)
        session.commit()
        session.add(Alert(finding_id=finding.id, target="json://x", target_hash="h1"))
        session.commit()
        session.add(Alert(finding_id=finding.id, target="json://x", target_hash="h1"))
        with pytest.raises(IntegrityError):
            session.commit()
        session.rollback()
        session.add(
            Finding(
                snapshot_id=snapshot.id,
                source="monitor:1",
                content_hash="ab" * 32,
                analyser="rules",
                relevant=True,
                severity="warning",
                summary="again",
            )
        )
        with pytest.raises(IntegrityError):
            session.commit()


def test_monitor_ids_are_never_reused(db_engine: Engine) -> None:
    with Session(db_engine) as session:
        first, second = Monitor(name="a", url="https://a.example"), Monitor(name="b", url="https://b.example")
        session.add_all([first, second])
        session.commit()
        session.delete(second)  # the newest: SQLite without AUTOINCREMENT would give its id out again
        session.commit()
        third = Monitor(name="c", url="https://c.example")
        session.add(third)
        session.commit()
        assert (first.id, third.id) == (1, 3)


def test_the_upgrade_starts_ids_above_any_history(tmp_path: Path) -> None:
    """A database made before ids were kept unique: a removed monitor 3 left snapshots behind."""
    from alembic import command

    from pipeline.db import alembic_config

    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    command.upgrade(alembic_config(engine), "0001")
    with engine.begin() as connection:  # the columns the tables had at 0001
        connection.execute(
            text(
                "INSERT INTO monitors (name, url, notify, interval_seconds, paused, next_check_at, created_at)"
                " VALUES ('a', 'https://a.example', '[]', 3600, 0, :at, :at)"
            ),
            {"at": datetime.now(UTC)},
        )
        connection.execute(
            text("INSERT INTO snapshots (source, content_hash, text, taken_at, trace) VALUES (:s, :h, :t, :at, '')"),
            {"s": "monitor:3", "h": "ab" * 32, "t": "the old page", "at": datetime.now(UTC)},
        )
    migrate(engine)
    with Session(engine) as session:
        monitor = Monitor(name="new", url="https://new.example")
        session.add(monitor)
        session.commit()
        assert monitor.id == 4
        assert session.exec(select(Monitor).where(Monitor.name == "a")).one().id == 1
    engine.dispose()


def test_the_known_head_is_alembics_head(db_engine: Engine) -> None:
    """Workers skip Alembic when the database is at HEAD_REVISION: it must be the newest migration."""
    from alembic.script import ScriptDirectory

    from pipeline.db import HEAD_REVISION, _revision, alembic_config

    assert ScriptDirectory.from_config(alembic_config(db_engine)).get_current_head() == HEAD_REVISION
    assert _revision(db_engine) == HEAD_REVISION  # what migrate() left


def test_rows_from_many_threads_are_committed_together(db_engine: Engine) -> None:
    from sqlalchemy import event

    from pipeline.groupcommit import GroupCommit
    from pipeline.models import Check, utcnow

    commits = []
    event.listen(db_engine, "commit", lambda connection: commits.append(1))
    rows = GroupCommit(db_engine)
    barrier = threading.Barrier(32)

    def insert(n: int) -> None:
        barrier.wait()  # every thread at once: the writer's turn finds others queued behind it
        for i in range(10):
            rows.insert(Check, {"source": f"s{n}-{i}", "stage": "fetch", "outcome": "unchanged", "detail": "",
                                "message_id": "", "started_at": utcnow(), "seconds": 0.0})  # fmt: skip

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(insert, range(32)))
    with db_engine.connect() as connection:
        sources = {source for (source,) in connection.execute(text("SELECT source FROM checks"))}
    assert sources == {f"s{n}-{i}" for n in range(32) for i in range(10)}  # each returned after its row was in
    assert len(commits) < 320, "every row had a commit of its own"


def test_a_row_at_fault_fails_alone(db_engine: Engine) -> None:
    from pipeline.groupcommit import GroupCommit, _Row
    from pipeline.models import Check, utcnow

    rows = GroupCommit(db_engine)
    good = {"source": "good", "stage": "fetch", "outcome": "unchanged", "detail": "", "message_id": "",
            "started_at": utcnow(), "seconds": 0.0}  # fmt: skip
    rows._waiting.append((_Row(Check, {**good, "source": "also good"}), Future()))  # queued behind the bad row
    with pytest.raises(IntegrityError):
        rows.insert(Check, {**good, "stage": None})  # NOT NULL
    rows.insert(Check, good)
    with db_engine.connect() as connection:
        sources = sorted(source for (source,) in connection.execute(text("SELECT source FROM checks")))
    assert sources == ["also good", "good"]


def test_units_of_work_from_many_threads_share_commits_and_get_their_own_results(db_engine: Engine) -> None:
    """Each thread gets its own new row's id back; a unit that fails fails alone, with its own error."""
    from sqlalchemy import event, insert

    from pipeline.groupcommit import GroupCommit
    from pipeline.models import utcnow

    commits = []
    event.listen(db_engine, "commit", lambda connection: commits.append(1))
    writes = GroupCommit(db_engine)
    barrier = threading.Barrier(16)

    def snapshot(source: str, content_hash: str | None) -> Callable[[Connection], int]:
        row = {"source": source, "content_hash": content_hash, "text": "", "taken_at": utcnow()}

        def unit(db: Connection) -> int:
            key = db.execute(insert(Snapshot), row).inserted_primary_key  # no content_hash: NOT NULL fails
            assert key is not None
            return int(key[0])

        return unit

    def take(n: int) -> tuple[int, int]:
        barrier.wait()  # every thread at once: the writer's turn finds others queued behind it
        return n, writes.run(snapshot(f"s{n}", "x"))

    with ThreadPoolExecutor(16) as pool:
        ids = dict(pool.map(take, range(16)))
    assert len(commits) < 16, "every unit had a commit of its own"

    writes._waiting.append((snapshot("queued", "x"), Future()))  # queued behind the bad unit's turn
    with pytest.raises(IntegrityError):
        writes.run(snapshot("bad", None))
    queued = writes.run(snapshot("after", "x"))
    with db_engine.connect() as connection:
        stored = dict(connection.execute(text("SELECT id, source FROM snapshots")).all())
    assert {ids[n]: f"s{n}" for n in ids} == {i: s for i, s in stored.items() if s.startswith("s")}
    assert stored[queued] == "after" and "queued" in stored.values() and "bad" not in stored.values()


def test_sqlite_writers_in_other_processes_wait_for_the_turn(tmp_path: Path) -> None:
    """One process's write transaction holds the database's lock file; another's turn comes after."""
    import fcntl
    import multiprocessing

    from pipeline.db import transaction

    engine = make_engine(f"sqlite:///{tmp_path / 'turns.db'}")
    migrate(engine)
    inside, leave = multiprocessing.Event(), multiprocessing.Event()

    def writer() -> None:  # forked: the engine (and any lock file descriptor) came from the parent
        with transaction(engine) as db:
            db.execute(text("INSERT INTO checks (source, stage, outcome, detail, message_id, started_at, seconds)"
                            " VALUES ('child', 'fetch', 'unchanged', '', '', '2026-01-01', 0)"))  # fmt: skip
            inside.set()
            leave.wait(30)

    with transaction(engine):  # the parent opens its lock file first: a fork must not share it
        pass
    child = multiprocessing.get_context("fork").Process(target=writer)
    child.start()
    try:
        assert inside.wait(30)
        with open(tmp_path / "turns.db.write-lock") as lock, pytest.raises(BlockingIOError):
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        seen: list[str | None] = []

        def our_turn() -> None:  # would come at once, inside the child's transaction, were the lock shared
            with transaction(engine) as db:
                seen.append(db.execute(text("SELECT source FROM checks")).scalar())

        ours = threading.Thread(target=our_turn)
        ours.start()
        time.sleep(0.3)  # time for a shared lock to let our turn in early
        leave.set()
        ours.join(30)
        assert seen == ["child"], "our turn came while the child's transaction was open"
    finally:
        leave.set()
        child.join(30)
    engine.dispose()


def test_postgresql_sessions_are_in_utc_and_keep_the_urls_options(db_engine: Engine) -> None:
    """The time zone is added to the URL's ``options`` (here the test's own search_path), not put in their place."""
    if db_engine.dialect.name != "postgresql":
        pytest.skip("a PostgreSQL session setting")
    with db_engine.connect() as connection:
        zone = connection.execute(text("SHOW timezone")).scalar_one()
        path = connection.execute(text("SHOW search_path")).scalar_one()
    assert zone == "UTC"
    assert path.startswith("t_")  # conftest's schema of this test


def test_failed_checks_are_news_once_by_stage_with_the_latest_reason(db_engine: Engine) -> None:
    from pipeline.models import Check
    from pipeline.queries import Failures, failed_checks_since

    def check(stage: str, outcome: str, detail: str = "") -> Check:
        now = datetime.now(UTC)
        return Check(source="s", stage=stage, outcome=outcome, detail=detail, message_id="m", started_at=now)

    with Session(db_engine) as session:
        session.add(check("fetch", "error", "history, not news"))
        session.commit()
    seen, failed = failed_checks_since(db_engine, None)
    assert failed == []  # the first look only marks where the table ends
    with Session(db_engine) as session:
        session.add_all([check("fetch", "error", "refused 10.0.0.1"), check("fetch", "unchanged"),
                         check("scrape", "error", "no match"), check("fetch", "error", "timed out")])  # fmt: skip
        session.commit()
    seen, failed = failed_checks_since(db_engine, seen)
    assert failed == [Failures("fetch", 2, "timed out", "s"), Failures("scrape", 1, "no match", "s")]
    assert failed_checks_since(db_engine, seen) == (seen, [])  # told once
