"""What travels between stages, and what is watched.

Each stage's message is a JSON object (Dramatiq encodes its arguments as
JSON), typed here as a ``TypedDict``: a stage hands the next one the job it
received plus what it added, so each type extends the one before::

    CheckJob (what is watched; fetch or render)  source, url, selector, rule, question, notify, trace, wait_for
    ScrapeJob   + body, content_type, etag, last_modified, input_hash, screenshot, read_at
    AnalyseJob  CheckJob + before_id, after_id, screenshot    (the body stays behind: it is in the snapshot)
    AlertJob    + finding_id, part, finding (notify holds the one target of this message)

History (snapshots and the validators fetch sends) belongs to *what is
watched*, never to a bare URL: a monitor's own row (``monitor:<id>``; ids are
never reused), or for ad-hoc events the normalised URL together with the
selector and how the body is obtained.  Two watchers of one URL with
different selectors therefore never compare against each other's text.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import uuid
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict, cast
from urllib.parse import urldefrag

import dramatiq
from url_normalize import url_normalize

from pipeline.redact import display_url

if TYPE_CHECKING:
    from pipeline.models import Monitor


class CheckJob(TypedDict):
    """What is watched, as the ingest makes it from an event: the ``fetch`` stage's message."""

    source: str  # the history key: monitor_source() or watched_source()
    url: NotRequired[str]  # with its credentials: only the fetch needs them (pushed content has none)
    selector: str | None
    rule: str | None
    question: str | None
    notify: list[str]
    trace: NotRequired[str]  # the event's id: every stage derives its message id from it
    wait_for: NotRequired[str | None]  # render: the CSS selector to wait for (None: network idle)


class ScrapeJob(CheckJob):
    """The ``scrape`` stage's message: the body (``pipeline.bodies``: inline, or its claim-check key) and its
    validators."""

    body: str
    content_type: str | None
    etag: NotRequired[str | None]
    last_modified: NotRequired[str | None]
    input_hash: NotRequired[str]  # of the selector, content type and body (fetch's, not pushed content's)
    screenshot: NotRequired[str]  # render: the PNG's key in the object store
    read_at: NotRequired[float]  # when the page arrived, seconds since the epoch: no text goes over a later one


class AnalyseJob(CheckJob):
    """The ``analyse`` stage's message: the change, as the snapshots before (None on a first check) and after."""

    before_id: int | None
    after_id: int
    screenshot: NotRequired[str]  # render: the PNG of the page, kept with the snapshot
    replayed: NotRequired[bool]  # `pipeline dlq replay`: judged by its monitor as it is now


class Told(TypedDict):
    """What an alert tells of its finding, as analyse stored it."""

    severity: str
    summary: str
    evidence: list[Any]


class AlertJob(AnalyseJob):
    """The ``alert`` stage's message: one finding for one target (``notify`` holds exactly one)."""

    finding_id: int
    part: str  # tells this target's message apart from the other targets' of the same check
    finding: NotRequired[Told]  # absent (a redelivered analyse, an older message): alert reads it back


def stage_message(queue: str, actor_name: str, args: Any, message_id: str, **options: Any) -> dramatiq.Message[Any]:
    """The Dramatiq message of ``actor_name`` on ``queue`` for ``args`` (a job, or a batch's list of jobs).

    Built here because ``send_with_options(message_id=...)`` keeps the id among the options: it would not
    be the message's id, which the broker publishes as ``Nats-Msg-Id`` for JetStream to drop duplicates by.
    ``options``: Dramatiq's (``retries`` already used) and ours (``turn_at``, a host's booked turn).
    """
    return dramatiq.Message(
        queue_name=queue, actor_name=actor_name, args=(args,), kwargs={}, options=options, message_id=message_id
    )


def message_id(actor_name: str, job: Any) -> str:
    """A job's message id for ``actor_name``, derived from its check's trace: a redelivered stage sends the same
    id again, and JetStream drops the duplicate.  ``part`` tells apart a stage's several jobs for one check
    (an alert per target)."""
    part = f"-{job['part']}" if job.get("part") else ""
    return f"{job.get('trace') or uuid.uuid4()}-{actor_name}{part}"


def watched(job: CheckJob) -> CheckJob:
    """Only what is watched of a later stage's job: what scrape hands analyse, without the body."""
    return cast(CheckJob, {key: value for key, value in job.items() if key in CheckJob.__annotations__})


def monitor_job(monitor: Monitor) -> tuple[str, CheckJob]:
    """A stored monitor's check as it is now: its first stage (``fetch``, or ``render`` for a page a browser
    loads) and its job, without a trace."""
    assert monitor.id is not None
    job = CheckJob(
        source=monitor_source(monitor.id),
        url=monitor.url or "",
        selector=monitor.selector,
        rule=monitor.rule,
        question=monitor.question,
        notify=list(monitor.notify),
    )
    if monitor.fetch == "browser":
        return "render", {**job, "wait_for": monitor.wait_for}
    return "fetch", job


#: The prefix of a stored monitor's history key.
MONITOR = "monitor:"


def monitor_source(monitor_id: int) -> str:
    """The history key of a stored monitor: ``monitor:42``."""
    return f"{MONITOR}{monitor_id}"


def monitor_of(source: str) -> int | None:
    """The monitor's id of a history key (``monitor_source``); None for an ad-hoc check's."""
    return int(source.removeprefix(MONITOR)) if source.startswith(MONITOR) else None


#: Distinct sources whose history key is remembered: producers check the same URLs again and again, and
#: normalising a URL (url-normalize, idna) was a third of ingesting an event.  About 0.5 KB each.
WATCHED_SOURCES_REMEMBERED = 16384


@functools.lru_cache(maxsize=WATCHED_SOURCES_REMEMBERED)
def watched_source(source: str, selector: str | None, how: str, key: bytes) -> str:
    """The history key of an ad-hoc check or pushed content.

    ``source`` is the URL (normalised by url-normalize as RFC 3986 §6 says: case,
    default port, dot segments, percent-escapes; and without its fragment, which
    is never sent to the server) or the producer's
    own name for pushed content; ``how`` says how the body is obtained
    (``fetch``, ``content``).  The result reads as the URL without credentials or
    query, followed by ``#`` and 16 hex digits of HMAC-SHA256 over all three
    under ``key`` (the deployment's webhook secret): it differs whenever any of
    the three does, and, keyed, it cannot be used to test guesses of a password
    or token in the URL.
    """
    is_url = source.startswith(("http://", "https://"))
    canonical = urldefrag(url_normalize(source) or source).url if is_url else source
    digest = hmac.new(key, "\n".join((how, canonical, selector or "")).encode(), hashlib.sha256).hexdigest()[:16]
    shown = display_url(canonical) if is_url else source
    return f"{shown[:1900]}#{digest}"
