"""The stage actors, one queue each: fetch (or render) -> scrape -> analyse -> alert.

Each queue but render's has two actors: the stage's own, one check a message, and ``<stage>_batch``,
several (``actors.batches``): the ingest sends ``fetch_batch`` when one pull brings several checks,
and each batch hands the next stage what it found as a batch again.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import dramatiq
from dramatiq.middleware import CurrentMessage

from actors import batches
from pipeline import batching, stages
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
    """Send to the next stage under an id derived from the check's trace (``batches.message_id``).

    A redelivered stage then publishes the same message id again, and
    JetStream drops the duplicate: one check never becomes two downstream.
    """
    return lambda job: batches.send(actor, job, batches.message_id(actor, job))


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


# Batches: several checks a message (actors.batches); each check that fails goes on alone as the single
# actor's message above, so these raise only for the batch as a whole, and are then retried whole.


@dramatiq.actor(queue_name="fetch", actor_name="fetch_batch", max_retries=5, time_limit=TIME_LIMIT_MS)
def fetch_batch(jobs: list[CheckJob]) -> None:
    """Checks the ingest pulled together: one read, their GETs at once, one commit (``stages.fetch_batch``)."""
    onward = batches.Onward(scrape, scrape_batch)
    with _broker().batch():  # what goes on is stored before this message is acked, and waited for once
        stages.fetch_batch(_context(), jobs, onward.send, lambda job, error: batches.hand_over(fetch, job, error))
        onward.flush()


@dramatiq.actor(queue_name="scrape", actor_name="scrape_batch", max_retries=5, time_limit=TIME_LIMIT_MS)
def scrape_batch(jobs: list[ScrapeJob]) -> None:
    onward = batches.Onward(analyse, analyse_batch)
    _each(lambda ctx, job: stages.scrape(ctx, job, onward.send), jobs, scrape, onward)


@dramatiq.actor(queue_name="analyse", actor_name="analyse_batch", max_retries=10, time_limit=TIME_LIMIT_MS)
def analyse_batch(jobs: list[AnalyseJob]) -> None:
    onward = batches.Onward(alert, alert_batch)
    _each(lambda ctx, job: stages.analyse(ctx, job, onward.send), jobs, analyse, onward)


@dramatiq.actor(queue_name="alert", actor_name="alert_batch", max_retries=8, time_limit=TIME_LIMIT_MS)
def alert_batch(jobs: list[AlertJob]) -> None:
    _each(stages.alert, jobs, alert, None)


def _each(work: Callable[[stages.Context, Any], None], jobs: list[Any], single: dramatiq.Actor,
          onward: batches.Onward | None) -> None:  # fmt: skip
    """Run a stage's work for every job of a batch at once; hand on what it sent, hand over what failed."""
    ctx = _context()
    errors = batching.each(lambda job: work(ctx, job), jobs)
    with _broker().batch():
        if onward is not None:
            onward.flush()
        for job, error in zip(jobs, errors, strict=True):
            if error is not None:
                batches.hand_over(single, job, error)
