"""The queries on monitors, alerts and checks that the CLI, the scheduler and the ingest share.

Each takes a SQLAlchemy engine and returns plain rows; none prints or decides
how anything is shown.  Indexes in ``pipeline.models`` follow these queries.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, insert, update
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from pipeline.jobs import monitor_source
from pipeline.models import Alert, Check, Finding, Monitor, Snapshot


def add_monitor(engine: Engine, monitor: Monitor) -> int:
    """Store a new monitor; its id (never one given before)."""
    with Session(engine) as session:
        session.add(monitor)
        session.commit()
        assert monitor.id is not None
        return monitor.id


def add_monitors(engine: Engine, rows: Iterable[dict[str, Any]], chunk: int = 5000) -> tuple[int, int, int]:
    """Store many new monitors (dicts of ``monitors`` columns) in one transaction, ``chunk`` rows per
    statement; returns (how many, first id, last id).  All or none are stored."""
    table = Monitor.__table__  # type: ignore[attr-defined]
    now = datetime.now(UTC)
    count, first, last = 0, 0, 0
    with engine.begin() as connection:
        iterator = iter(rows)
        while batch := list(itertools.islice(iterator, chunk)):
            values = [{"paused": False, "next_check_at": now, "created_at": now, **row} for row in batch]
            ids = connection.execute(insert(table).returning(table.c.id), values).scalars().all()
            first = first or min(ids)
            last = max(last, *ids)
            count += len(ids)
    return count, first, last


def get_monitor(engine: Engine, monitor_id: int) -> Monitor | None:
    with Session(engine) as session:
        return session.get(Monitor, monitor_id)


def list_monitors(engine: Engine) -> Sequence[Monitor]:
    with Session(engine) as session:
        return session.exec(select(Monitor).order_by(col(Monitor.id))).all()


def set_paused(engine: Engine, monitor_id: int, paused: bool) -> bool:
    """Pause or resume a monitor; False when there is no such monitor."""
    with Session(engine) as session:
        monitor = session.get(Monitor, monitor_id)
        if monitor is None:
            return False
        monitor.paused = paused
        session.add(monitor)
        session.commit()
        return True


def update_monitor(engine: Engine, monitor_id: int, changes: dict[str, Any]) -> Monitor | None:
    """Set a monitor's fields to ``changes`` (field name: value); the monitor as stored, or None when there is none."""
    with Session(engine) as session:
        monitor = session.get(Monitor, monitor_id)
        if monitor is None:
            return None
        for field, value in changes.items():
            setattr(monitor, field, value)
        session.add(monitor)
        session.commit()
        session.refresh(monitor)
        return monitor


def remove_monitor(engine: Engine, monitor_id: int) -> bool:
    """Delete a monitor, detaching its history (kept under an id no monitor will get again)."""
    with Session(engine) as session:
        monitor = session.get(Monitor, monitor_id)
        if monitor is None:
            return False
        session.delete(monitor)
        session.commit()
        return True


def due_slots(session: Session, now: datetime, limit: int) -> list[tuple[int, datetime, int]]:
    """(id, due time, interval in seconds) of unpaused monitors whose check is due, oldest first; on
    PostgreSQL locked for this transaction, skipping those another scheduler holds (``FOR UPDATE SKIP
    LOCKED``), so schedulers share the work.  Plain columns, not objects: a page is thousands of rows."""
    table = Monitor.__table__  # type: ignore[attr-defined]
    query = (
        sa_select(table.c.id, table.c.next_check_at, table.c.interval_seconds)
        .where(table.c.paused.is_(False), table.c.next_check_at <= now)
        .order_by(table.c.next_check_at)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return [(row.id, row.next_check_at, row.interval_seconds) for row in session.execute(query)]


def reschedule(session: Session, next_checks: list[tuple[int, datetime]]) -> None:
    """Set each monitor's next check, in one statement run for all (not committed here)."""
    if not next_checks:
        return
    table = Monitor.__table__  # type: ignore[attr-defined]
    statement = update(table).where(table.c.id == bindparam("monitor_id")).values(next_check_at=bindparam("due"))
    session.execute(statement, [{"monitor_id": id_, "due": due} for id_, due in next_checks])


def monitor_counts(engine: Engine) -> tuple[int, int]:
    """(monitors in all, paused)."""
    with Session(engine) as session:
        total = session.exec(select(func.count()).select_from(Monitor)).one()
        paused = session.exec(select(func.count()).select_from(Monitor).where(col(Monitor.paused).is_(True))).one()
    return total, paused


@dataclass(frozen=True)
class History:
    """A monitor's latest checks and findings, newest first, and its latest screenshot's key (rendered pages)."""

    checks: Sequence[Check]
    findings: Sequence[Finding]
    screenshot: str | None = None


def monitor_history(engine: Engine, monitor_id: int, checks: int = 8, findings: int = 5) -> History:
    source = monitor_source(monitor_id)
    with Session(engine) as session:
        latest_checks = session.exec(
            select(Check).where(Check.source == source).order_by(col(Check.id).desc()).limit(checks)
        ).all()
        latest_findings = session.exec(
            select(Finding).where(Finding.source == source).order_by(col(Finding.id).desc()).limit(findings)
        ).all()
        shown = (Snapshot.source == source, col(Snapshot.screenshot).is_not(None))
        screenshot = session.exec(select(Snapshot.screenshot).where(*shown).order_by(col(Snapshot.id).desc())).first()
    return History(latest_checks, latest_findings, screenshot)


def recent_alerts(engine: Engine, limit: int) -> Sequence[Any]:
    """(Alert, Finding) pairs, newest first."""
    with Session(engine) as session:
        query = select(Alert, Finding).join(Finding).order_by(col(Alert.created_at).desc()).limit(limit)
        return session.exec(query).all()


@dataclass(frozen=True)
class Failures:
    """Checks that failed in one stage since the last look: how many, and the newest one's reason and source."""

    stage: str
    count: int
    latest: str
    source: str = ""  # what the newest one checks: monitor:42, or the URL without credentials


def failed_checks_since(engine: Engine, after_id: int | None) -> tuple[int, list[Failures]]:
    """The ``checks`` rows with outcome ``error`` whose id is past ``after_id``, by stage, and the id to
    look past next time.  ``after_id`` None: none yet, only where ``checks`` ends (history is not news)."""
    with engine.connect() as connection:
        newest = connection.execute(sa_select(func.max(Check.id))).scalar() or 0
        if after_id is None or newest <= after_id:
            return newest, []
        rows = connection.execute(
            sa_select(col(Check.stage), col(Check.detail), col(Check.source))
            .where(col(Check.id) > after_id, col(Check.id) <= newest, col(Check.outcome) == "error")
            .order_by(col(Check.id))
        ).all()
    found: dict[str, Failures] = {}
    for stage, detail, source in rows:
        count = found[stage].count + 1 if stage in found else 1
        found[stage] = Failures(stage, count, detail, source)
    return newest, list(found.values())
