"""The four stages' work, separate from Dramatiq so each reads top to bottom.

A *job* is the message that travels from stage to stage, typed in
``pipeline.jobs``: what is watched (``source``, ``url``, ``selector``,
``rule``, ``question``, ``notify``) plus what each stage adds (``body_key``,
snapshot ids, ``finding_id``).  Every
stage is idempotent: a redelivered message finds its own earlier writes
(snapshots by content hash, findings and alerts by unique keys) and sends
nothing twice.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Literal, TypeVar
from urllib.parse import urlsplit

from sqlalchemy import and_, or_, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from pipeline import metrics, webhooks
from pipeline.bodies import BodyStore
from pipeline.fetcher import Fetcher, FetchError
from pipeline.jobs import AlertJob, AnalyseJob, CheckJob, ScrapeJob, watched
from pipeline.models import Alert, Check, Delivery, Finding, Snapshot, utcnow
from pipeline.politeness import Politeness
from pipeline.redact import display_url, redact_url
from pipeline.rules import parse_rule

if TYPE_CHECKING:  # the LLM SDK, Apprise and the content libraries load in the stages that use them
    from pipeline.failures import Delivered
    from pipeline.llm import LLMAnalyser

T = TypeVar("T")

#: How a stage hands its job to the next one (the actors send it as a Dramatiq message).
Send = Callable[[T], None]


@dataclass
class Context:
    """What the stages share in one worker process."""

    engine: Engine
    bodies: BodyStore
    fetcher: Fetcher
    webhook_secret: str
    politeness: Politeness | None = None
    llm: LLMAnalyser | None = None


def _session(ctx: Context) -> Session:
    """A session whose objects stay readable after commit: no SELECT to reload what was just written."""
    return Session(ctx.engine, expire_on_commit=False)


def _count(stage: str, outcome: str) -> None:
    metrics.CHECKS.labels(stage, outcome).inc()


def _ended(job: CheckJob, stage: str, outcome: str, started: float, detail: str = "") -> Check:
    """The check's one row in ``checks``: where it ended and how (or a failed attempt), to add to a session.

    Only a check's end is written (a stage that hands the job on writes nothing), in the
    transaction of the stage's other writes where it has any: one row and one commit less per stage.
    """
    _count(stage, outcome)
    return Check(
        source=job["source"],
        stage=stage,
        outcome=outcome,
        detail=detail[:2000],
        message_id=job.get("trace", "")[:64],
        seconds=time.monotonic() - started,
    )


def _record(ctx: Context, check: Check) -> None:
    with _session(ctx) as session:
        session.add(check)
        session.commit()


def _latest_snapshot(session: Session, source: str) -> Snapshot | None:
    newest_first = (col(Snapshot.taken_at).desc(), col(Snapshot.id).desc())
    query = select(Snapshot).where(Snapshot.source == source).order_by(*newest_first)
    return session.exec(query.limit(1)).first()


def _validators(ctx: Context, source: str) -> tuple[str | None, str | None]:
    """The ETag and Last-Modified of the source's latest snapshot, for a conditional GET (the two columns only)."""
    newest_first = (col(Snapshot.taken_at).desc(), col(Snapshot.id).desc())
    query = select(Snapshot.etag, Snapshot.last_modified).where(Snapshot.source == source).order_by(*newest_first)
    with ctx.engine.connect() as connection:
        row = connection.execute(query.limit(1)).first()
    return (row[0], row[1]) if row else (None, None)


class NotYetError(Exception):
    """Politeness: this host was fetched moments ago; come back after ``after`` seconds."""

    def __init__(self, after: float) -> None:
        super().__init__(f"host busy for {after:.2f}s")
        self.after = after


def fetch(ctx: Context, job: CheckJob, send_scrape: Send[ScrapeJob]) -> None:
    """GET the URL (conditionally); store the body; hand its key to scrape."""
    if ctx.politeness is not None:
        wait = ctx.politeness.wait_for(urlsplit(job["url"]).hostname or "")
        if wait > 0:
            raise NotYetError(wait)
    started = time.monotonic()
    etag, last_modified = _validators(ctx, job["source"])
    try:
        result = ctx.fetcher.fetch(job["url"], etag=etag, last_modified=last_modified)
    except FetchError as e:  # recorded (`monitor show`, the check-outcomes panel), then retried or dead-lettered
        _record(ctx, _ended(job, "fetch", "error", started, e.reason))
        raise
    if result.not_modified:
        _record(ctx, _ended(job, "fetch", "unchanged", started, "304 Not Modified"))
        return
    _count("fetch", "fetched")
    send_scrape(
        ScrapeJob(
            **job,
            body=ctx.bodies.put(result.body),
            content_type=result.content_type,
            etag=result.etag,
            last_modified=result.last_modified,
        )
    )


def scrape(ctx: Context, job: ScrapeJob, send_analyse: Send[AnalyseJob]) -> None:
    """Extract and normalise; an unchanged source ends here."""
    from pipeline.content import content_hash, extract

    started = time.monotonic()
    text = extract(ctx.bodies.get(job["body"]), job.get("content_type"), job.get("selector")).text
    digest = content_hash(text)
    what = watched(job)
    with _session(ctx) as session:
        last = _latest_snapshot(session, job["source"])
        if last is not None and job.get("trace") and last.trace == job["trace"]:
            # Redelivered after our own snapshot was stored: hand the same change on again.
            _count("scrape", "changed")
            assert last.id is not None
            send_analyse(AnalyseJob(**what, before_id=last.before_id, after_id=last.id))
            return
        if last is not None and last.content_hash == digest:
            session.add(_ended(job, "scrape", "unchanged", started))
            session.commit()
            return
        snapshot = Snapshot(
            source=job["source"],
            content_hash=digest,
            text=text,
            etag=job.get("etag"),
            last_modified=job.get("last_modified"),
            trace=job.get("trace", ""),
            before_id=last.id if last else None,
        )
        session.add(snapshot)
        session.commit()
        before_id, after_id = snapshot.before_id, snapshot.id
    _count("scrape", "changed")
    assert after_id is not None
    send_analyse(AnalyseJob(**what, before_id=before_id, after_id=after_id))


def analyse(ctx: Context, job: AnalyseJob, send_alert: Send[AlertJob]) -> None:
    from pipeline.content import diff

    """Judge the change: the monitor's rule first, then its question if an LLM is configured.

    The rule is a cheap filter (``changed`` by default lets every change
    through); only what passes it costs an LLM call.
    """
    started = time.monotonic()
    rule = parse_rule(job.get("rule"))
    with _session(ctx) as session:
        after = session.get(Snapshot, job["after_id"])
        before = session.get(Snapshot, job["before_id"]) if job.get("before_id") else None
        assert after is not None and after.id is not None, f"snapshot {job['after_id']} is gone"
        after_id, content_hash, after_text = after.id, after.content_hash, after.text
        before_text = before.text if before is not None else None
    change = diff(before_text, after_text)
    verdict, analyser = rule.evaluate(change), "rules"
    question = job.get("question")
    if verdict.relevant and question and ctx.llm is not None:
        verdict, analyser = ctx.llm.judge(question, change), ctx.llm.name
    outcome = "relevant" if verdict.relevant else "irrelevant"
    with _session(ctx) as session:
        finding = Finding(
            snapshot_id=after_id,
            source=job["source"],
            content_hash=content_hash,
            analyser=analyser,
            relevant=verdict.relevant,
            severity=verdict.severity,
            summary=verdict.summary,
            evidence=list(verdict.evidence),
        )
        session.add(finding)
        if not (verdict.relevant and job.get("notify")):  # the check ends here: its row goes in with the finding
            session.add(_ended(job, "analyse", outcome, started, verdict.summary))
        else:
            _count("analyse", outcome)
        try:
            session.commit()
        except IntegrityError:  # redelivered: the finding (and the check's row, if it ended here) exist
            session.rollback()
            same_change = (Finding.snapshot_id == after_id, Finding.analyser == analyser)
            finding = session.exec(select(Finding).where(*same_change)).one()
        finding_id, relevant = finding.id, finding.relevant
    if relevant:
        # One message per target: a receiver that hangs or fails delays and retries only its own alert.
        for target in job.get("notify", []):
            assert finding_id is not None
            message = AlertJob(**job, finding_id=finding_id, part=_target_hash(target)[:12])
            message["notify"] = [target]
            send_alert(message)


class DeliveryError(RuntimeError):
    """A delivery that did not succeed; ``transient`` and ``after`` as ``pipeline.failures`` decides."""

    def __init__(self, reason: str, *, transient: bool, after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient
        self.after = after


#: What the history says of an attempt whose worker stopped between sending and recording.
UNKNOWN_OUTCOME = "outcome unknown: the worker stopped during this attempt (it may have arrived)"


def alert(ctx: Context, job: AlertJob) -> None:
    """Deliver a finding to the job's target once; raise ``DeliveryError`` while it is not delivered.

    Two commits per delivery: the claim (the alert's row, inserted already taken, or an
    existing one taken over), then the attempt, the alert's status and the check's row together.
    """
    started = time.monotonic()
    [target] = job["notify"]
    with _session(ctx) as session:
        finding = session.get(Finding, job["finding_id"])
        assert finding is not None and finding.id is not None
        record, claim = _claim(session, finding.id, target)
        if claim == "sent":
            return  # redelivered message: never a second alert
        if claim == "busy":
            raise DeliveryError(f"{redact_url(target)}: being delivered by another worker", transient=True,
                                after=CLAIM_LEASE.total_seconds())  # fmt: skip
        assert record.id is not None
        attempts = 0
        if claim != "new":
            attempts = len(session.exec(select(Delivery).where(Delivery.alert_id == record.id)).all())
        if claim == "taken over":  # its lease ran out: a worker died after sending, perhaps, and before recording
            attempts += 1
            session.add(Delivery(alert_id=record.id, attempt=attempts, ok=False, error=UNKNOWN_OUTCOME))
        outcome = _deliver(ctx, record, finding, job, target)
        channel = "webhook" if target.startswith(("http://", "https://")) else "apprise"
        metrics.ALERTS.labels(channel, "sent" if outcome.ok else "failed").inc()
        failure = "" if outcome.ok else f"{redact_url(target)}: {outcome.error}"
        session.add(
            Delivery(
                alert_id=record.id,
                attempt=attempts + 1,
                ok=outcome.ok,
                status_code=outcome.status,
                error=outcome.error,
            )
        )
        record.status = "sent" if outcome.ok else "failed"
        record.claimed_at = None
        session.add(record)
        session.add(_ended(job, "alert", "sent" if outcome.ok else "error", started, failure))
        session.commit()
    if not outcome.ok:
        raise DeliveryError(failure, transient=outcome.transient, after=outcome.after)


#: How long a worker may hold an alert for sending before another may take it over: a live worker
#: has finished its attempt by then (every delivery has one deadline, ``Fetcher.timeout``, 15 s).
CLAIM_LEASE = timedelta(seconds=30)

Claim = Literal["new", "retry", "taken over", "sent", "busy"]


def _claim(session: Session, finding_id: int, target: str) -> tuple[Alert, Claim]:
    """Take the alert of ``finding_id`` to ``target`` for sending, atomically: of two workers, exactly one wins.

    The first delivery inserts the row already taken (one commit); a later one takes the row
    when it failed before or its lease ran out.  Says how: ``new``, ``retry`` (failed before),
    ``taken over`` (another worker's lease ran out), or why not: ``sent``, ``busy``.
    """
    now = utcnow()
    target_hash = _target_hash(target)
    record = Alert(finding_id=finding_id, target=redact_url(target), target_hash=target_hash, status="sending",
                   claimed_at=now)  # fmt: skip
    session.add(record)
    try:
        session.commit()
        return record, "new"
    except IntegrityError:  # the row exists: this is a retry or a redelivery
        session.rollback()
    record = session.exec(select(Alert).where(Alert.finding_id == finding_id, Alert.target_hash == target_hash)).one()
    if record.status == "sent":
        return record, "sent"
    taken_over = record.status == "sending"
    claimable = or_(
        col(Alert.status).in_(("pending", "failed")),
        and_(col(Alert.status) == "sending", col(Alert.claimed_at) < now - CLAIM_LEASE),
    )
    result = session.execute(
        update(Alert).where(col(Alert.id) == record.id, claimable).values(status="sending", claimed_at=now)
    )
    session.commit()
    session.refresh(record)
    if result.rowcount != 1:  # type: ignore[attr-defined]  # an UPDATE's result is a CursorResult
        return record, "busy"
    return record, "taken over" if taken_over else "retry"


def _target_hash(target: str) -> str:
    return hashlib.sha256(target.encode()).hexdigest()


def _deliver(ctx: Context, record: Alert, finding: Finding, job: AlertJob, target: str) -> Delivered:
    from pipeline import notify

    payload = {
        "type": "pipeline.alert",
        "timestamp": utcnow().isoformat(),
        "data": {
            "source": job["source"],
            "url": display_url(job["url"]) if job.get("url") else None,
            "severity": finding.severity,
            "summary": finding.summary,
            "evidence": finding.evidence,
            "finding_id": finding.id,
        },
    }
    if not target.startswith(("http://", "https://")):
        return notify.send(target, finding, job, ctx.fetcher)
    body = json.dumps(payload, sort_keys=True).encode()
    headers = webhooks.signed_headers(ctx.webhook_secret, f"alert-{record.id}", body)
    headers["Content-Type"] = "application/json"
    return webhooks.post(ctx.fetcher, target, body, headers)
