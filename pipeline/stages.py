"""The stages' work, separate from Dramatiq so each reads top to bottom.

A *job* is the message that travels from stage to stage, typed in
``pipeline.jobs``: what is watched (``source``, ``url``, ``selector``,
``rule``, ``question``, ``notify``) plus what each stage adds (``body``,
snapshot ids, ``finding_id``).  Every
stage is idempotent: a redelivered message finds its own earlier writes
(snapshots by content hash, findings and alerts by unique keys) and sends
nothing twice.

The stages read and write with SQLAlchemy Core statements on the SQLModel
tables: the ORM's unit of work and object loading were a third of a stage's
CPU for one row in, one row out.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast
from urllib.parse import urlsplit

import sqlalchemy
from sqlalchemy import and_, bindparam, func, or_, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel, col, select

from pipeline import metrics, webhooks
from pipeline.bodies import BodyStore
from pipeline.db import inserting, transaction
from pipeline.fetcher import Conditional, Fetcher, FetchError, FetchResult
from pipeline.groupcommit import GroupCommit
from pipeline.jobs import AlertJob, AnalyseJob, CheckJob, ScrapeJob, Told, monitor_of, watched
from pipeline.llm.errors import LLMRejectedError, LLMUnavailableError
from pipeline.models import Alert, Check, Delivery, Finding, Snapshot, as_utc, utcnow
from pipeline.politeness import DELIVERED_SOONER, LATE, SLEEP_AT_MOST, Politeness
from pipeline.redact import display_url, redact_text, redact_url
from pipeline.rules import RuleError, parse_rule

if TYPE_CHECKING:  # the LLM SDK, Apprise and the content libraries load in the stages that use them
    from pipeline.failures import Delivered
    from pipeline.llm import LLMAnalyser
    from pipeline.render import Renderer

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
    renderer: Renderer | None = None
    screenshots: BodyStore | None = None  # rendered pages' PNGs, kept longer than bodies

    @cached_property
    def writes(self) -> GroupCommit:
        """Where the stages write: many threads' rows and statements per commit (``pipeline.groupcommit``)."""
        return GroupCommit(self.engine)


# The statements every check runs, built once: building one per call (its expressions, then its
# cache key) cost more CPU than running it.
_NEWEST_FIRST = (col(Snapshot.taken_at).desc(), col(Snapshot.id).desc())
LAST_SEEN = (  # of one source, bound by _latest_of
    sqlalchemy.select(*map(col, (Snapshot.source, Snapshot.etag, Snapshot.last_modified, Snapshot.input_hash)))
    .order_by(*_NEWEST_FIRST)
    .limit(1)
)
LATEST = (  # six columns: past what sqlmodel's select types
    sqlalchemy.select(*map(col, (Snapshot.id, Snapshot.content_hash, Snapshot.trace, Snapshot.before_id)))
    .add_columns(col(Snapshot.input_hash), col(Snapshot.taken_at))
    .where(col(Snapshot.source) == bindparam("source"))
    .order_by(*_NEWEST_FIRST)
    .limit(1)
)
TEXTS = select(Snapshot.id, Snapshot.content_hash, Snapshot.text).where(
    col(Snapshot.id).in_(bindparam("ids", expanding=True))
)
FINDING = select(Finding.severity, Finding.summary, Finding.evidence).where(col(Finding.id) == bindparam("finding_id"))
SEEN_AGAIN = (
    update(Snapshot).where(col(Snapshot.id) == bindparam("snapshot_id")).values(input_hash=bindparam("new_hash"))
)
SETTLED = (
    update(Alert).where(col(Alert.id) == bindparam("alert_id")).values(status=bindparam("new_status"), claimed_at=None)
)


def _count(stage: str, outcome: str) -> None:
    metrics.CHECKS.labels(stage, outcome).inc()


def _ended(job: CheckJob, stage: str, outcome: str, started: float, detail: str = "") -> dict[str, Any]:
    """The check's one row in ``checks``: where it ended and how (or a failed attempt), to insert.

    Only a check's end is written (a stage that hands the job on writes nothing), in the
    transaction of the stage's other writes where it has any: one row and one commit less per stage.
    """
    _count(stage, outcome)
    return {
        "source": job["source"],
        "stage": stage,
        "outcome": outcome,
        "detail": detail[:2000],
        "message_id": job.get("trace", "")[:64],
        "started_at": utcnow(),
        "seconds": time.monotonic() - started,
    }


def _insert(db: Connection, table: type[SQLModel], values: dict[str, Any]) -> int:
    """Insert one row into ``table``; its new id."""
    key = db.execute(inserting(table), values).inserted_primary_key
    assert key is not None
    return int(key[0])


def _record(ctx: Context, row: dict[str, Any]) -> None:
    ctx.writes.insert(Check, row)


#: Of a source's latest snapshot, what fetch needs: the validators to send and the hash of the bytes read.
Seen = tuple[str | None, str | None, str | None]
NEVER_SEEN: Seen = (None, None, None)


def _last_seen(ctx: Context, sources: list[str]) -> dict[str, Seen]:
    """The ETag, Last-Modified and input hash of each source's latest snapshot, in one query.

    A source without a snapshot is not in the result.
    """
    if not sources:
        return {}
    with ctx.engine.connect() as connection:
        rows = connection.execute(_latest_of(len(sources)), {f"s{i}": s for i, s in enumerate(sources)})
        return {row.source: (row.etag, row.last_modified, row.input_hash) for row in rows}


@functools.lru_cache(maxsize=64)
def _latest_of(count: int) -> sqlalchemy.CompoundSelect:
    """The latest snapshot of each of ``count`` sources (bound as ``s0``, ``s1``, ...): one index lookup each."""
    latest = [LAST_SEEN.where(col(Snapshot.source) == bindparam(f"s{i}")).subquery(f"latest{i}") for i in range(count)]
    return sqlalchemy.union_all(*(sqlalchemy.select(*each.c) for each in latest))


def input_hash(selector: str | None, content_type: str, body: bytes) -> str:
    """SHA-256 of everything scrape's text depends on: the same again, the same text again."""
    digest = hashlib.sha256(f"{selector or ''}\0{content_type}\0".encode())
    digest.update(body)
    return digest.hexdigest()


class NotYetError(Exception):
    """Politeness: not this check's turn at its host yet; come back after ``after`` seconds.

    ``turn_at``: the turn booked for it (``pipeline.politeness``), to hand back when it comes (None: none
    booked, ask again).
    """

    def __init__(self, after: float, turn_at: float | None = None) -> None:
        super().__init__(f"host busy for {after:.2f}s")
        self.after = after
        self.turn_at = turn_at


def _polite(ctx: Context, job: CheckJob, turn_at: float | None = None, sleep_at_most: float | None = None) -> None:
    """Return when it is the check's turn at its host; else raise ``NotYetError``.

    ``turn_at``: the turn the check booked when it was put back, if any: it goes then without asking again,
    unless it came too late for it (``politeness.LATE``).  A turn less than ``sleep_at_most`` seconds away
    (``politeness.SLEEP_AT_MOST`` by default) is waited for in this thread.
    """
    politeness = ctx.politeness
    if politeness is None or politeness.limiter is None:
        return
    wait = None if turn_at is None else turn_at - politeness.clock()
    if wait is None or wait < -politeness.interval * LATE:  # no turn booked, or it has passed
        turn = politeness.turn(urlsplit(job["url"]).hostname or "")
        wait, turn_at = turn.wait, turn.at
    if wait > (SLEEP_AT_MOST if sleep_at_most is None else sleep_at_most):  # back a little before its turn
        raise NotYetError(max(wait - DELIVERED_SOONER, 0.0), turn_at)
    time.sleep(max(wait, 0.0))


def fetch(ctx: Context, job: CheckJob, send_scrape: Send[ScrapeJob], turn_at: float | None = None) -> None:
    """GET the URL (conditionally); store the body; hand its key to scrape.

    ``turn_at``: the host's turn the check booked (``NotYetError.turn_at``) when it was put back.
    Raises ``NotYetError`` (politeness) and ``FetchError`` (recorded as the check's attempt).
    """
    _polite(ctx, job, turn_at)
    started = time.monotonic()
    seen = _last_seen(ctx, [job["source"]]).get(job["source"], NEVER_SEEN)
    [outcome] = ctx.fetcher.fetch_all([_conditional(job, seen)])
    if isinstance(outcome, FetchError):  # recorded (`monitor show`, the outcomes panel), then retried or dead-lettered
        _record(ctx, _ended(job, "fetch", "error", started, outcome.reason))
        raise outcome
    ended: list[dict[str, Any]] = []
    scrape_job = _fetched(ctx, job, outcome, seen, started, ended)
    if scrape_job is None:
        _record(ctx, ended[0])
    else:
        send_scrape(scrape_job)


#: How ``fetch_batch`` hands on a check it could not finish, with why: the single-check ``fetch`` then
#: puts it back (politeness), retries it or dead-letters it, as it does every check.
HandOver = Callable[[CheckJob, "NotYetError | FetchError"], None]


def fetch_batch(ctx: Context, jobs: list[CheckJob], send_scrape: Send[ScrapeJob], hand_over: HandOver) -> None:
    """``fetch`` for several checks at once: one read of their last snapshots, their GETs together, one commit.

    A check whose host is busy (politeness) or whose fetch failed is handed over
    (``hand_over``) to the single-check path after its attempt is recorded; each check's
    outcome is its own, as if it had come alone.
    """
    started = time.monotonic()
    ready: list[CheckJob] = []
    for job in jobs:
        try:
            _polite(ctx, job, sleep_at_most=0.0)  # the batch's GETs go at once: only a turn that is now
            ready.append(job)
        except NotYetError as e:
            hand_over(job, e)
    last_seen = _last_seen(ctx, [job["source"] for job in ready])
    seen = [last_seen.get(job["source"], NEVER_SEEN) for job in ready]
    outcomes = ctx.fetcher.fetch_all([_conditional(job, each) for job, each in zip(ready, seen, strict=True)])
    rows: list[dict[str, Any]] = []
    later: list[tuple[CheckJob, FetchError]] = []
    for job, each, outcome in zip(ready, seen, outcomes, strict=True):
        if isinstance(outcome, FetchError):
            rows.append(_ended(job, "fetch", "error", started, outcome.reason))
            later.append((job, outcome))
            continue
        scrape_job = _fetched(ctx, job, outcome, each, started, rows)
        if scrape_job is not None:
            send_scrape(scrape_job)
    if rows:  # the checks that ended here, and the failed attempts: one commit
        ctx.writes.run(lambda db: db.execute(inserting(Check), rows))
    for job, error in later:  # after their rows: a failure to store them retries the batch, not these twice
        hand_over(job, error)


def _conditional(job: CheckJob, seen: Seen) -> Conditional:
    etag, last_modified, _ = seen
    return Conditional(job["url"], etag, last_modified)


def _fetched(
    ctx: Context,
    job: CheckJob,
    result: FetchResult,
    seen: Seen,
    started: float,
    ended: list[dict[str, Any]],
) -> ScrapeJob | None:
    """Scrape's job for a fetched page, or None when the check ends here (unchanged): its row added to ``ended``."""
    if result.not_modified:
        ended.append(_ended(job, "fetch", "unchanged", started, "304 Not Modified"))
        return None
    read = input_hash(job.get("selector"), result.content_type, result.body)
    if read == seen[2]:  # the very bytes the latest text came from: the same text (changedetection.io checks so too)
        ended.append(_ended(job, "fetch", "unchanged", started, "the same bytes as the last check"))
        return None
    _count("fetch", "fetched")
    return ScrapeJob(
        **job,
        body=ctx.bodies.put(result.body),
        content_type=result.content_type,
        etag=result.etag,
        last_modified=result.last_modified,
        input_hash=read,
        read_at=result.received_at,  # each its own, in a batch too: copies of a check are stored in this order
    )


def render(ctx: Context, job: CheckJob, send_scrape: Send[ScrapeJob], turn_at: float | None = None) -> None:
    """Load the URL in headless Chromium; hand the DOM after the wait (and a screenshot) to scrape.

    Raises ``NotYetError`` (politeness, as fetch), ``FetchError`` for the page itself (as fetch does) and
    ``RenderError`` for the browser.
    """
    from pipeline.render import RenderError

    _polite(ctx, job, turn_at)
    assert ctx.renderer is not None and ctx.screenshots is not None
    started = time.monotonic()
    try:
        rendered = ctx.renderer.render(job["url"], wait_for=job.get("wait_for"))
    except (FetchError, RenderError) as e:  # recorded, then retried or dead-lettered
        _record(ctx, _ended(job, "render", "error", started, e.reason))
        raise
    rendered_at = time.time()  # the DOM as it was after the wait
    _count("render", "rendered")
    send_scrape(
        ScrapeJob(
            **job,
            body=ctx.bodies.put(rendered.html),
            content_type="text/html; charset=utf-8",  # the DOM, serialised by the browser
            screenshot=ctx.screenshots.put(rendered.screenshot, inline=False),
            read_at=rendered_at,
        )
    )


#: How many times a check compares again when another check of its source stored a change first. Each
#: time one of the checks racing on a source stores its change, so this is more than ever race at once.
MAX_RACES = 32


def scrape(ctx: Context, job: ScrapeJob, send_analyse: Send[AnalyseJob]) -> None:
    """Extract and normalise; an unchanged source ends here.

    Raises ``ExtractError`` (the body cannot give the text asked for; recorded as the check's
    attempt), and ``RuntimeError`` when other checks of the source kept storing changes first.
    """
    from pipeline.content import ExtractError, content_hash, extract

    started = time.monotonic()
    try:
        text = extract(ctx.bodies.get(job["body"]), job.get("content_type"), job.get("selector")).text
    except ExtractError as e:  # recorded (`monitor show`, the outcomes panel), then dead-lettered
        _record(ctx, _ended(job, "scrape", "error", started, str(e)))
        raise
    digest = content_hash(text)
    for _ in range(MAX_RACES):
        if _compared(ctx, job, text, digest, started, send_analyse):
            return
    raise RuntimeError(f"{MAX_RACES} other checks of {job['source']} stored a change first; trying again later")


def _compared(
    ctx: Context, job: ScrapeJob, text: str, digest: str, started: float, send_analyse: Send[AnalyseJob]
) -> bool:
    """Compare the text with the source's latest snapshot: end the check (unchanged), or store the change
    and hand it to analyse.  False when another check of the source stored a change first, after this one
    read the latest: compare again, with that one."""
    what = watched(job)
    with ctx.engine.connect() as db:
        last = db.execute(LATEST, {"source": job["source"]}).first()
    if last is not None and job.get("trace") and last.trace == job["trace"]:
        # Redelivered after our own snapshot was stored: hand the same change on again.
        _count("scrape", "changed")
        send_analyse(AnalyseJob(**what, before_id=last.before_id, after_id=last.id))
        return True
    read_at = datetime.fromtimestamp(job["read_at"], UTC) if job.get("read_at") else utcnow()
    if last is not None and read_at < as_utc(last.taken_at):
        # A check that read the page later stored its text first (this one was redelivered after a crash, say,
        # or raced a later copy): this older text must not go over it, and alert as a change back.
        _record(ctx, _ended(job, "scrape", "superseded", started, "a later check of this source stored its text"))
        return True
    if last is not None and last.content_hash == digest:
        check = _ended(job, "scrape", "unchanged", started)
        seen = {"snapshot_id": last.id, "new_hash": job.get("input_hash")}

        def unchanged(db: Connection) -> None:
            db.execute(inserting(Check), check)
            if seen["new_hash"] and seen["new_hash"] != last.input_hash:  # next time, fetch knows these bytes
                db.execute(SEEN_AGAIN, seen)

        ctx.writes.run(unchanged)
        return True
    before_id = last.id if last else None
    snapshot = {
        "source": job["source"],
        "content_hash": digest,
        "text": text,
        "etag": job.get("etag"),
        "last_modified": job.get("last_modified"),
        "taken_at": read_at,  # when the page was read: the history is in the order the pages were seen
        "trace": job.get("trace", ""),
        "before_id": before_id,
        "follows": before_id or 0,  # unique with the source: of two checks that read this latest, one stores
        "input_hash": job.get("input_hash"),
        "screenshot": job.get("screenshot"),
    }
    try:
        after_id = ctx.writes.run(lambda db: _insert(db, Snapshot, snapshot))
    except IntegrityError:  # the same event twice at once, say: the other check's snapshot is the latest now
        return False
    _count("scrape", "changed")
    analyse_job = AnalyseJob(**what, before_id=before_id, after_id=after_id)
    if job.get("screenshot"):
        analyse_job["screenshot"] = job["screenshot"]
    send_analyse(analyse_job)
    return True


def analyse(ctx: Context, job: AnalyseJob, send_alert: Send[AlertJob]) -> None:
    """Judge the change: the monitor's rule first, then its question if an LLM is configured.

    The rule is a cheap filter (``changed`` by default lets every change
    through); only what passes it costs an LLM call.  Raises ``RuleError`` (a rule that cannot be
    understood), ``LLMRejectedError`` and ``LLMUnavailableError``, each recorded as the check's
    attempt, and ``RateLimitedError`` (the LLM quota is busy: a wait, not an attempt).
    """
    started = time.monotonic()
    try:
        if job.get("replayed"):
            job = _as_monitor_is_now(ctx, job)
        _analyse(ctx, job, send_alert, started)
    except (
        RuleError,
        LLMRejectedError,
        LLMUnavailableError,
        MonitorRemovedError,
    ) as e:  # recorded, then retried or dead-lettered
        _record(ctx, _ended(job, "analyse", "error", started, redact_text(str(e))))
        raise


class MonitorRemovedError(LookupError):
    """A replayed check's monitor is gone: there is nothing to judge it by."""


def _as_monitor_is_now(ctx: Context, job: AnalyseJob) -> AnalyseJob:
    """A replayed check (``pipeline dlq replay``), with its monitor's rule, question and targets as they are
    now (fixed since, perhaps), read from this worker's database.  Raises ``MonitorRemovedError``."""
    now = {key: value for key, value in job.items() if key != "replayed"}
    monitor_id = monitor_of(job["source"])
    if monitor_id is not None:
        from pipeline.queries import get_monitor

        monitor = get_monitor(ctx.engine, monitor_id)
        if monitor is None:
            raise MonitorRemovedError(f"{job['source']} was removed: nothing to judge this change by")
        now.update(rule=monitor.rule, question=monitor.question, notify=list(monitor.notify))
    return cast(AnalyseJob, now)


def _analyse(ctx: Context, job: AnalyseJob, send_alert: Send[AlertJob], started: float) -> None:
    from pipeline.content import diff

    rule = parse_rule(job.get("rule"))
    wanted = [job["after_id"], *([job["before_id"]] if job.get("before_id") else [])]
    with ctx.engine.connect() as db:
        texts = {row.id: row for row in db.execute(TEXTS, {"ids": wanted})}
    after = texts.get(job["after_id"])
    assert after is not None, f"snapshot {job['after_id']} is gone"
    before_text = texts[job["before_id"]].text if job.get("before_id") else None
    change = diff(before_text, after.text)
    verdict, analyser = rule.evaluate(change), "rules"
    question = job.get("question")
    if verdict.relevant and question and ctx.llm is not None:
        verdict, analyser = ctx.llm.judge(question, change), ctx.llm.name
    outcome = "relevant" if verdict.relevant else "irrelevant"
    finding = {
        "snapshot_id": after.id,
        "source": job["source"],
        "content_hash": after.content_hash,
        "analyser": analyser,
        "relevant": verdict.relevant,
        "severity": verdict.severity,
        "summary": verdict.summary,
        "evidence": list(verdict.evidence),
        "created_at": utcnow(),
    }
    ends_here = not (verdict.relevant and job.get("notify"))
    check = _ended(job, "analyse", outcome, started, verdict.summary) if ends_here else None

    def store(db: Connection) -> int:
        finding_id = _insert(db, Finding, finding)
        if check is not None:  # the check ends here: its row goes in with the finding
            db.execute(inserting(Check), check)
        return finding_id

    try:
        finding_id = ctx.writes.run(store)
        if check is None:
            _count("analyse", outcome)
        relevant = verdict.relevant
        told: Told | None = {
            "severity": finding["severity"],
            "summary": finding["summary"],
            "evidence": finding["evidence"],
        }
    except IntegrityError:  # redelivered: the finding (and the check's row, if it ended here) exist
        same_change = (Finding.snapshot_id == after.id, Finding.analyser == analyser)
        with ctx.engine.connect() as db:
            finding_id, relevant = db.execute(select(Finding.id, Finding.relevant).where(*same_change)).one()
        told = None  # the stored verdict may differ from this one (an LLM's): alert reads it
    if relevant:
        # One message per target: a receiver that hangs or fails delays and retries only its own alert.
        for target in job.get("notify", []):
            message = AlertJob(**job, finding_id=finding_id, part=_target_hash(target)[:12])
            message["notify"] = [target]
            if told is not None:  # what was just stored: alert need not read it back
                message["finding"] = told
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
    finding = _told(ctx, job)
    alert_id, created_at, claim = _claim(ctx, job["finding_id"], target)
    if claim == "sent":
        return  # redelivered message: never a second alert
    if claim == "busy":
        raise DeliveryError(f"{redact_url(target)}: being delivered by another worker", transient=True,
                            after=CLAIM_LEASE.total_seconds())  # fmt: skip
    attempts = 0
    if claim != "new":
        with ctx.engine.connect() as db:
            attempts = db.execute(select(func.count()).where(Delivery.alert_id == alert_id)).scalar_one()
    deliveries = []
    if claim == "taken over":  # its lease ran out: a worker died after sending, perhaps, and before recording
        attempts += 1
        deliveries.append({"attempt": attempts, "ok": False, "status_code": None, "error": UNKNOWN_OUTCOME})
    outcome = _deliver(ctx, webhook_id(alert_id, created_at), finding, job, target)
    channel = "webhook" if target.startswith(("http://", "https://")) else "apprise"
    metrics.ALERTS.labels(channel, "sent" if outcome.ok else "failed").inc()
    failure = "" if outcome.ok else f"{redact_url(target)}: {outcome.error}"
    deliveries.append(
        {"attempt": attempts + 1, "ok": outcome.ok, "status_code": outcome.status, "error": outcome.error}
    )
    records = [{**d, "alert_id": alert_id, "at": utcnow()} for d in deliveries]
    settled = {"alert_id": alert_id, "new_status": "sent" if outcome.ok else "failed"}
    check = _ended(job, "alert", "sent" if outcome.ok else "error", started, failure)

    def settle(db: Connection) -> None:
        db.execute(inserting(Delivery), records)
        db.execute(SETTLED, settled)
        db.execute(inserting(Check), check)

    ctx.writes.run(settle)
    if not outcome.ok:
        raise DeliveryError(failure, transient=outcome.transient, after=outcome.after)


def _told(ctx: Context, job: AlertJob) -> Told:
    """What the alert tells of its finding: carried in the message by analyse, else read back."""
    told = job.get("finding")
    if told is not None:
        return told
    with ctx.engine.connect() as db:
        row = db.execute(FINDING, {"finding_id": job["finding_id"]}).first()
    assert row is not None, f"finding {job['finding_id']} is gone"
    return {"severity": row.severity, "summary": row.summary, "evidence": row.evidence}


#: How long a worker may hold an alert for sending before another may take it over: a live worker
#: has finished its attempt by then (every delivery has one deadline, ``Fetcher.timeout``, 15 s).
CLAIM_LEASE = timedelta(seconds=30)

Claim = Literal["new", "retry", "taken over", "sent", "busy"]


def _claim(ctx: Context, finding_id: int, target: str) -> tuple[int, datetime, Claim]:
    """Take the alert of ``finding_id`` to ``target`` for sending, atomically: of two workers, exactly one wins.

    The first delivery inserts the row already taken (one commit); a later one takes the row
    when it failed before or its lease ran out.  Returns the alert's id, when it was made, and how:
    ``new``, ``retry`` (failed before), ``taken over`` (another worker's lease ran out), or why not:
    ``sent``, ``busy``.
    """
    now = utcnow()
    target_hash = _target_hash(target)
    row = {"finding_id": finding_id, "target": redact_url(target), "target_hash": target_hash, "created_at": now}
    try:
        return (
            ctx.writes.run(lambda db: _insert(db, Alert, {**row, "status": "sending", "claimed_at": now})),
            now,
            "new",
        )
    except IntegrityError:  # the row exists: this is a retry or a redelivery
        pass
    claimable = or_(
        col(Alert.status).in_(("pending", "failed")),
        and_(col(Alert.status) == "sending", col(Alert.claimed_at) < now - CLAIM_LEASE),
    )
    with transaction(ctx.engine) as db:
        same = (Alert.finding_id == finding_id, Alert.target_hash == target_hash)
        alert_id, created_at, status = db.execute(select(Alert.id, Alert.created_at, Alert.status).where(*same)).one()
        if status == "sent":
            return alert_id, created_at, "sent"
        taken = db.execute(
            update(Alert).where(col(Alert.id) == alert_id, claimable).values(status="sending", claimed_at=now)
        )
    if taken.rowcount != 1:
        return alert_id, created_at, "busy"
    return alert_id, created_at, "taken over" if status == "sending" else "retry"


def webhook_id(alert_id: int, created_at: datetime) -> str:
    """The alert's ``webhook-id``: ``alert-<id>-<when it was made, UTC, to the microsecond>``.

    The same on every retry, and unlike the row id alone never the same for two alerts of two
    databases (a fresh one numbers from 1 again): Standard Webhooks receivers drop an id they have
    seen as a duplicate, so a repeated id would silence an alert.
    """
    if created_at.tzinfo is not None:  # PostgreSQL gives it back aware, SQLite naive (both UTC)
        created_at = created_at.astimezone(UTC).replace(tzinfo=None)
    return f"alert-{alert_id}-{created_at:%Y%m%dT%H%M%S%f}"


def _target_hash(target: str) -> str:
    return hashlib.sha256(target.encode()).hexdigest()


def _deliver(ctx: Context, message_id: str, finding: Told, job: AlertJob, target: str) -> Delivered:
    payload = {
        "type": "pipeline.alert",
        "timestamp": utcnow().isoformat(),
        "data": {
            "source": job["source"],
            "url": display_url(job["url"]) if job.get("url") else None,
            "severity": finding["severity"],
            "summary": finding["summary"],
            "evidence": finding["evidence"],
            "finding_id": job["finding_id"],
            "screenshot": job.get("screenshot"),  # a rendered page's PNG, by its key in the object store
        },
    }
    if not target.startswith(("http://", "https://")):
        from pipeline import notify  # Apprise loads only in a worker that sends through it

        return notify.send(target, finding, job, ctx.fetcher)
    body = json.dumps(payload, sort_keys=True).encode()
    headers = webhooks.signed_headers(ctx.webhook_secret, message_id, body)
    headers["Content-Type"] = "application/json"
    return webhooks.post(ctx.fetcher, target, body, headers)
