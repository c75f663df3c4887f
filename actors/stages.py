"""The stage actors, one queue each: fetch (or render) -> scrape -> analyse -> alert.

The fetch queue has two: ``fetch``, one check a message, and ``fetch_batch``, several (the ingest sends one
when it pulls several events together).
"""

from __future__ import annotations

import math
import uuid
from typing import Any

import dramatiq
from dramatiq.common import compute_backoff
from dramatiq.middleware import CurrentMessage, Retries

from pipeline import stages
from pipeline.broker import JetStreamBroker
from pipeline.content import ExtractError
from pipeline.fetcher import FetchError
from pipeline.jobs import AlertJob, AnalyseJob, CheckJob, ScrapeJob
from pipeline.llm import LLMRejectedError, LLMUnavailableError
from pipeline.policy import TIME_LIMIT_SECONDS
from pipeline.ratelimit import RateLimitedError
from pipeline.render import RenderError
from pipeline.rules import RuleError
from pipeline.runtime import context
from pipeline.settings import current

# Errors that retrying cannot fix go straight to the dead letters, with their reason.
PERMANENT = (FetchError, ExtractError, RuleError, LLMRejectedError)
# Under what a worker is given to finish its messages when scaled down (pipeline/policy.py), so a scale-down
# never cuts a message short and runs it again; a stage's own timeouts stay well under it.
TIME_LIMIT_MS = TIME_LIMIT_SECONDS * 1000


def _next(actor: dramatiq.Actor) -> stages.Send:
    """Send to the next stage under an id derived from the check's trace.

    A redelivered stage then publishes the same message id again, and
    JetStream drops the duplicate: one check never becomes two downstream.
    """

    def send(job: dict[str, Any]) -> None:
        trace = job.get("trace")
        if trace:  # "part" tells apart the several messages one stage sends (an alert per target)
            part = f"-{job['part']}" if job.get("part") else ""
            _send(actor, job, f"{trace}-{actor.actor_name}{part}")
        else:
            actor.send(job)

    return send


def _send(actor: dramatiq.Actor, job: Any, message_id: str, *, delay: int | None = None, retries: int = 0) -> None:
    """Enqueue ``job`` for ``actor`` under ``message_id`` (``send_with_options`` would keep an id among the
    options, not make it the message's), ``retries`` already used up."""
    options = {"retries": retries} if retries else {}
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=actor.queue_name, actor_name=actor.actor_name, args=(job,), kwargs={}, options=options,
        message_id=message_id,
    )  # fmt: skip
    actor.broker.enqueue(message, delay=delay)


def _later(actor: dramatiq.Actor, job: CheckJob | AnalyseJob, seconds: float) -> None:
    """Put the message being processed back, due in ``seconds``, without using up a retry.

    The same message goes back (its id, its retry count): a new one sent instead would start its
    retries over, and a check that fails every time on a busy host would never reach the dead letters.
    """
    message = CurrentMessage.get_current_message()
    delay = math.ceil(seconds * 1000)
    if message is None:  # called outside a worker (a test calling the actor directly)
        actor.send_with_options(args=(job,), delay=delay)
    else:
        actor.broker.enqueue(message.copy(), delay=delay)


def _retry(reason: str, after: float | None) -> dramatiq.Retry:
    """A Dramatiq retry after the server's delay, or with the actor's backoff when it gave none."""
    return dramatiq.Retry(reason, delay=None if after is None else math.ceil(after * 1000))


def _broker() -> JetStreamBroker:
    return dramatiq.get_broker()  # type: ignore[return-value]


def _context() -> stages.Context:
    return context(_broker(), current())


@dramatiq.actor(queue_name="fetch", actor_name="fetch", max_retries=5, throws=PERMANENT, time_limit=TIME_LIMIT_MS)
def fetch(job: CheckJob) -> None:
    try:
        stages.fetch(_context(), job, _next(scrape))
    except stages.NotYetError as e:  # politeness: come back later, without using up a retry
        _later(fetch, job, e.after)
    except FetchError as e:
        if not e.transient:
            raise  # one of PERMANENT: dead-lettered now, with the reason
        raise _retry(e.reason, e.after) from None


@dramatiq.actor(queue_name="fetch", actor_name="fetch_batch", max_retries=5, time_limit=TIME_LIMIT_MS)
def fetch_batch(jobs: list[CheckJob]) -> None:
    """Several checks the ingest pulled together (``pipeline.stages.fetch_batch``); raises only for the batch
    as a whole (the database or NATS away), and is then retried whole."""
    with _broker().batch():  # scrape's jobs and the hand-overs go out together, stored before the ack
        stages.fetch_batch(_context(), jobs, _next(scrape), _hand_over)


def _hand_over(job: CheckJob, why: stages.NotYetError | FetchError) -> None:
    """Send a check that ``fetch_batch`` could not finish on alone, to ``fetch``: its retries and dead letter
    are then those of any check.

    Its host busy: due when the host's turn comes, no retry used (as ``_later``).  Its fetch failed
    transiently: due after the server's delay, else Dramatiq's first backoff, one retry used, as if
    ``fetch`` had raised it.  Failed for good: tried once more by ``fetch``, which dead-letters it with
    its reason.
    """
    message_id = f"{job.get('trace') or uuid.uuid4()}-fetch"
    if isinstance(why, stages.NotYetError):
        _send(fetch, job, message_id, delay=math.ceil(why.after * 1000))
    elif why.transient and why.after is not None:
        _send(fetch, job, message_id, delay=math.ceil(why.after * 1000), retries=1)
    elif why.transient:
        retries = next(m for m in fetch.broker.middleware if isinstance(m, Retries))
        _, backoff = compute_backoff(0, factor=retries.min_backoff, max_backoff=retries.max_backoff)
        _send(fetch, job, message_id, delay=backoff, retries=1)
    else:
        _send(fetch, job, message_id, retries=1)


@dramatiq.actor(
    queue_name="render", actor_name="render", max_retries=5, throws=(*PERMANENT, RenderError), time_limit=TIME_LIMIT_MS
)
def render(job: CheckJob) -> None:
    try:
        stages.render(_context(), job, _next(scrape))
    except stages.NotYetError as e:  # politeness, as for fetch
        _later(render, job, e.after)
    except FetchError as e:
        if not e.transient:
            raise
        raise _retry(e.reason, e.after) from None
    except RenderError as e:  # a crashed or hung browser: replaced, and the check tried again
        if not e.transient:
            raise  # a wait_for Chromium refuses: dead-lettered now, with the reason
        raise _retry(e.reason, None) from None


@dramatiq.actor(queue_name="scrape", actor_name="scrape", max_retries=5, throws=PERMANENT, time_limit=TIME_LIMIT_MS)
def scrape(job: ScrapeJob) -> None:
    stages.scrape(_context(), job, _next(analyse))


# LLM outages last: ten retries, backing off from 15 s to 30 min, ride out about two hours.
@dramatiq.actor(
    queue_name="analyse",
    actor_name="analyse",
    max_retries=10,
    max_backoff=1_800_000,
    throws=PERMANENT,
    time_limit=TIME_LIMIT_MS,
)
def analyse(job: AnalyseJob) -> None:
    try:
        stages.analyse(_context(), job, _next(alert))
    except RateLimitedError as e:  # the shared LLM quota is busy: wait in the queue, not in a thread
        _later(analyse, job, e.wait)
    except LLMUnavailableError as e:  # 429s, 5xx: a retry, after the delay the server asked for, else backoff
        raise _retry(str(e), e.after) from None


@dramatiq.actor(
    queue_name="alert",
    actor_name="alert",
    max_retries=8,
    min_backoff=2000,
    max_backoff=600_000,
    throws=(stages.DeliveryError,),
    time_limit=TIME_LIMIT_MS,
)
def alert(job: AlertJob) -> None:
    try:
        stages.alert(_context(), job)
    except stages.DeliveryError as e:
        if not e.transient:
            raise  # a 4xx, a refused address: dead-lettered now, with the reason
        raise _retry(e.reason, e.after) from None
