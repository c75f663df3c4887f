"""Batch actors' machinery: several checks in one message, each ending as if it had come alone.

A batch runs its checks at once on this process's batch threads (``pipeline.batching.each``): their waits overlap
and their writes share commits (``pipeline.groupcommit``).  What they hand the next stage is
collected and sent as one message per ``pipeline.batching.MAX_CHECKS`` (``Onward``).  A check that
fails goes on alone as its stage's own message (``hand_over``), so its retries, its backoff and
its dead letter are those of any check; the batch itself raises only when nothing of it could be
done (the database or NATS away), and is then retried whole: every stage is idempotent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import uuid
from typing import Any

import dramatiq
from dramatiq.common import compute_backoff
from dramatiq.middleware import Retries

from pipeline.batching import groups
from pipeline.ratelimit import RateLimitedError
from pipeline.stages import NotYetError

logger = logging.getLogger(__name__)


def send(actor: dramatiq.Actor, job: Any, message_id: str, *, delay: int | None = None, retries: int = 0) -> None:
    """Enqueue ``job`` for ``actor`` under ``message_id`` (``send_with_options`` would keep an id among the
    options, not make it the message's), ``retries`` already used up, due in ``delay`` ms."""
    options = {"retries": retries} if retries else {}
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=actor.queue_name, actor_name=actor.actor_name, args=(job,), kwargs={}, options=options,
        message_id=message_id,
    )  # fmt: skip
    actor.broker.enqueue(message, delay=delay)


def message_id(actor: dramatiq.Actor, job: dict[str, Any]) -> str:
    """A job's id on ``actor``'s queue, derived from its check's trace: a redelivered stage sends the same id
    again, and JetStream drops the duplicate.  ``part`` tells apart a stage's several jobs for one check
    (an alert per target)."""
    part = f"-{job['part']}" if job.get("part") else ""
    return f"{job.get('trace') or uuid.uuid4()}-{actor.actor_name}{part}"


class Onward:
    """What a batch hands the next stage: collected from its threads, then sent by ``flush``, one job as
    ``single``'s message, several as ``batch``'s (one per ``MAX_CHECKS``, under NATS' payload)."""

    def __init__(self, single: dramatiq.Actor, batch: dramatiq.Actor) -> None:
        self.single = single
        self.batch = batch
        self._jobs: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def send(self, job: Any) -> None:
        with self._lock:
            self._jobs.append(job)

    def flush(self) -> None:
        """Send what was collected.  Sorted by trace, so a redelivered batch that hands on the same jobs sends
        the same messages, which JetStream drops as duplicates."""
        with self._lock:
            jobs, self._jobs = sorted(self._jobs, key=lambda j: (j.get("trace", ""), j.get("part", ""))), []
        for group in groups(jobs, lambda job: len(json.dumps(job))):
            if len(group) == 1:
                send(self.single, group[0], message_id(self.single, group[0]))
            else:
                ids = "\n".join(message_id(self.single, job) for job in group)
                digest = hashlib.sha256(ids.encode()).hexdigest()[:24]
                send(self.batch, group, f"{self.batch.actor_name}-{digest}")


def hand_over(actor: dramatiq.Actor, job: Any, error: BaseException) -> None:
    """Send a check that failed in a batch on alone, to ``actor`` (its stage's own), as its failure calls for.

    Waiting for a turn (a busy host, a full quota): due when the turn comes, no retry used.  A
    transient failure (``transient`` true, or any error that is not the actor's ``throws``): due after
    the server's delay (``after``), else the actor's first backoff, one retry used, as if the actor had
    raised it.  A permanent one: dead-lettered with its reason, as ``actor``'s message, which ``pipeline dlq
    replay`` sends to ``actor``.
    """
    key = message_id(actor, job)
    if isinstance(error, NotYetError | RateLimitedError):
        wait = error.after if isinstance(error, NotYetError) else error.wait
        send(actor, job, key, delay=math.ceil(wait * 1000))
        return
    throws = actor.options.get("throws") or ()
    transient = getattr(error, "transient", not isinstance(error, throws))
    if not transient:  # as the actor would have: dead-lettered now, with the reason, and not tried again
        message: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=actor.queue_name, actor_name=actor.actor_name, args=(job,), kwargs={}, options={},
            message_id=key,
        )  # fmt: skip
        actor.broker.dead_letter_message(message, error)  # type: ignore[attr-defined]
        return
    if not hasattr(error, "transient") and not hasattr(error, "after"):  # not a stage's own: worth its traceback
        logger.warning("A check failed in a batch of %s; it goes on alone.", actor.actor_name, exc_info=error)
    after = getattr(error, "after", None)
    if after is None:
        retries = next(m for m in actor.broker.middleware if isinstance(m, Retries))
        factor = actor.options.get("min_backoff", retries.min_backoff)
        ceiling = actor.options.get("max_backoff", retries.max_backoff)
        _, delay = compute_backoff(0, factor=factor, max_backoff=ceiling)
    else:
        delay = math.ceil(after * 1000)
    send(actor, job, key, delay=delay, retries=1)
