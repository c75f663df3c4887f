"""The pipeline's state, as SQLModel tables (SQLite by default, PostgreSQL at scale).

Indexes follow the queries: the scheduler asks for unpaused monitors whose
``next_check_at`` has passed; scrape asks for a monitor's latest snapshot;
the CLI lists recent alerts.  Uniqueness constraints carry idempotency: a
redelivered message cannot write a second finding or a second alert.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """A stored time, aware: PostgreSQL gives it back aware, SQLite naive (both UTC)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class Monitor(SQLModel, table=True):
    """A watched source.  Ids are never reused (SQLite AUTOINCREMENT, PostgreSQL's sequence), so the
    history kept under ``monitor:<id>`` after a monitor is removed never passes to a new one."""

    __tablename__ = "monitors"
    __table_args__ = (Index("ix_monitors_due", "paused", "next_check_at"), {"sqlite_autoincrement": True})

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200)
    url: str | None = Field(default=None, max_length=2048)
    selector: str | None = Field(default=None, max_length=512)
    rule: str | None = Field(default=None, max_length=1000)
    question: str | None = Field(default=None, max_length=2000)
    notify: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    fetch: str = Field(default="http", max_length=16)  # http, or browser (the render stage)
    wait_for: str | None = Field(default=None, max_length=512)  # browser: a CSS selector to wait for
    interval_seconds: int = Field(default=3600, ge=30)
    paused: bool = False
    next_check_at: datetime = Field(default_factory=utcnow)
    created_at: datetime = Field(default_factory=utcnow)


class Snapshot(SQLModel, table=True):
    """What a source looked like at one check: the normalised text and its validators."""

    __tablename__ = "snapshots"
    __table_args__ = (
        Index("ix_snapshots_source_taken", "source", "taken_at"),
        Index("uq_snapshots_source_follows", "source", "follows", unique=True),
    )

    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(max_length=2048)  # what is watched: pipeline.jobs (monitor:<id>, or URL#digest)
    content_hash: str = Field(max_length=64, index=True)
    text: str
    etag: str | None = Field(default=None, max_length=512)
    last_modified: str | None = Field(default=None, max_length=128)
    taken_at: datetime = Field(default_factory=utcnow)
    #: The check that took it, and the snapshot it was compared with: a redelivered
    #: scrape finds its own snapshot and hands the same change on again.
    trace: str = Field(default="", max_length=128, index=True)
    before_id: int | None = None
    #: ``before_id``, or 0 for a source's first snapshot; unique with ``source``, so a source's history
    #: is a line: of two checks that compared with the same snapshot, only one stores a change
    #: (``pipeline.stages.scrape``).  NULL on snapshots stored before revision 0005.
    follows: int | None = None
    #: SHA-256 of what scrape read (selector, content type, body), brought up to date by each check that
    #: found the text unchanged: fetch stops a page whose bytes are the same again (pipeline.stages).
    input_hash: str | None = Field(default=None, max_length=64)
    #: A rendered page's screenshot (PNG), by its key in the object store (``sha256:<hex>``).
    screenshot: str | None = Field(default=None, max_length=80)


class Check(SQLModel, table=True):
    """One stage's work on one message, for the CLI, dashboards and debugging."""

    __tablename__ = "checks"
    __table_args__ = (Index("ix_checks_source_started", "source", "started_at"),)

    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(max_length=2048)
    stage: str = Field(max_length=16)
    outcome: str = Field(max_length=16)  # changed, unchanged, superseded, relevant, irrelevant, sent, error
    detail: str = Field(default="", max_length=2000)
    message_id: str = Field(max_length=64, index=True)
    started_at: datetime = Field(default_factory=utcnow)
    seconds: float = 0.0


class Finding(SQLModel, table=True):
    """The analyser's verdict on one change."""

    __tablename__ = "findings"
    # One verdict per change (the snapshot that ended it) and analyser: content that
    # comes back later is a new change with a new finding.
    __table_args__ = (UniqueConstraint("snapshot_id", "analyser", name="uq_findings_change"),)

    id: int | None = Field(default=None, primary_key=True)
    snapshot_id: int = Field(foreign_key="snapshots.id")
    source: str = Field(max_length=2048)
    content_hash: str = Field(max_length=64)
    analyser: str = Field(max_length=32)  # "rules" or "llm"
    relevant: bool
    severity: str = Field(max_length=16)
    summary: str = Field(max_length=2000)
    evidence: list[Any] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, index=True)


class Alert(SQLModel, table=True):
    """One finding to one notification target: sent at most once."""

    __tablename__ = "alerts"
    __table_args__ = (UniqueConstraint("finding_id", "target_hash", name="uq_alerts_target"),)

    id: int | None = Field(default=None, primary_key=True)
    finding_id: int = Field(foreign_key="findings.id", index=True)
    target: str = Field(max_length=2048)  # shown redacted; the hash is what dedupes
    target_hash: str = Field(max_length=64)
    status: str = Field(default="pending", max_length=16)  # pending, sending, sent, failed
    claimed_at: datetime | None = None  # when a worker took it for sending (a lease)
    created_at: datetime = Field(default_factory=utcnow, index=True)


class Delivery(SQLModel, table=True):
    """Every attempt to deliver an alert, successful or not."""

    __tablename__ = "deliveries"
    __table_args__ = (UniqueConstraint("alert_id", "attempt", name="uq_deliveries_attempt"),)

    id: int | None = Field(default=None, primary_key=True)
    alert_id: int = Field(foreign_key="alerts.id", index=True)
    attempt: int
    ok: bool
    status_code: int | None = None
    error: str = Field(default="", max_length=2000)
    at: datetime = Field(default_factory=utcnow)
