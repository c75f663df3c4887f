"""The stage actors, one queue each: fetch (or render) -> scrape -> analyse -> alert.

Each queue but render's has two actors: the stage's own, one check a message, and ``<stage>_batch``,
several (``actors.batches``): the ingest sends ``fetch_batch`` when one pull brings several checks,
and each batch hands the next stage what it found as a batch again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dramatiq

from actors import batches
from actors.recovery import alone, hand_over, send, turn_at
from pipeline import batching, stages
from pipeline.broker import JetStreamBroker
from pipeline.content import ExtractError
from pipeline.fetcher import FetchError
from pipeline.jobs import AlertJob, AnalyseJob, CheckJob, ScrapeJob, message_id
from pipeline.llm import LLMRejectedError
from pipeline.policy import TIME_LIMIT_SECONDS
from pipeline.render import RenderError
from pipeline.rules import RuleError
from pipeline.runtime import context
from pipeline.settings import current

# Errors that retrying cannot fix go straight to the dead letters, with their reason.
PERMANENT = (FetchError, ExtractError, RuleError, LLMRejectedError, stages.MonitorRemovedError)
# Under what a worker is given to finish its messages when scaled down (pipeline/policy.py), so a scale-down
# never cuts a message short and runs it again; a stage's own timeouts stay well under it.
TIME_LIMIT_MS = TIME_LIMIT_SECONDS * 1000


def _next(actor: dramatiq.Actor) -> stages.Send:
    """Send to the next stage under an id derived from the check's trace (``pipeline.jobs.message_id``).

    A redelivered stage then publishes the same message id again, and
    JetStream drops the duplicate: one check never becomes two downstream.
    """
    return lambda job: send(actor, job, message_id(actor.actor_name, job))


def _broker() -> JetStreamBroker:
    return dramatiq.get_broker()  # type: ignore[return-value]


def _context() -> stages.Context:
    return context(_broker(), current())


@dramatiq.actor(queue_name="fetch", actor_name="fetch", max_retries=5, throws=PERMANENT, time_limit=TIME_LIMIT_MS)
def fetch(job: CheckJob) -> None:
    with alone(fetch, job):  # a busy host: back at its booked turn; a failure: retried or dead-lettered
        stages.fetch(_context(), job, _next(scrape), turn_at())


# A crashed or hung browser is a transient RenderError (replaced, and the check tried again); a wait_for
# Chromium refuses, a permanent one.
@dramatiq.actor(
    queue_name="render", actor_name="render", max_retries=5, throws=(*PERMANENT, RenderError), time_limit=TIME_LIMIT_MS
)
def render(job: CheckJob) -> None:
    with alone(render, job):
        stages.render(_context(), job, _next(scrape), turn_at())


@dramatiq.actor(queue_name="scrape", actor_name="scrape", max_retries=5, throws=PERMANENT, time_limit=TIME_LIMIT_MS)
def scrape(job: ScrapeJob) -> None:
    with alone(scrape, job):
        stages.scrape(_context(), job, _next(analyse))


# LLM outages last: ten retries, backing off from 15 s to 30 min, ride out about two hours. The shared LLM
# quota being busy is a wait in the queue, not in a thread; 429s and 5xx a retry after the server's delay.
@dramatiq.actor(
    queue_name="analyse",
    actor_name="analyse",
    max_retries=10,
    max_backoff=1_800_000,
    throws=PERMANENT,
    time_limit=TIME_LIMIT_MS,
)
def analyse(job: AnalyseJob) -> None:
    with alone(analyse, job):
        stages.analyse(_context(), job, _next(alert))


# A 4xx or a refused address is a permanent DeliveryError: dead-lettered now, with the reason.
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
    with alone(alert, job):
        stages.alert(_context(), job)


# Batches: several checks a message (actors.batches); each check that fails goes on alone as the single
# actor's message above, so these raise only for the batch as a whole, and are then retried whole.


@dramatiq.actor(queue_name="fetch", actor_name="fetch_batch", max_retries=5, time_limit=TIME_LIMIT_MS)
def fetch_batch(jobs: list[CheckJob]) -> None:
    """Checks the ingest pulled together: one read, their GETs at once, one commit (``stages.fetch_batch``)."""
    onward = batches.Onward(scrape, scrape_batch)
    with _broker().batch():  # what goes on is stored before this message is acked, and waited for once
        stages.fetch_batch(_context(), jobs, onward.send, lambda job, error: hand_over(fetch, job, error))
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
                hand_over(single, job, error)
