"""What becomes of a check that failed or must wait: one rule for a check alone and a check of a batch.

The stage's actor decides, as Dramatiq's ``Retries`` middleware would for its message (``recovery``):

- waiting for a turn (a busy host, a full LLM quota) is no failure: the check is put back, due
  when the turn comes, without using a retry (``turn_at`` keeps a host's booked turn);
- a transient failure (the error's ``transient``, else any error that is not one of the actor's
  ``throws``) is retried after the server's delay (``after``), else with the actor's backoff;
- a permanent one is dead-lettered at once, with its reason.

A check alone (``alone``) raises to Dramatiq, which retries or dead-letters its message; a check of
a batch goes on alone as its stage's own message (``hand_over``), so its retries, backoff and dead
letter are those of any check.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import dramatiq
from dramatiq.common import compute_backoff
from dramatiq.middleware import CurrentMessage, Retries

from pipeline.jobs import message_id, stage_message
from pipeline.ratelimit import RateLimitedError
from pipeline.stages import NotYetError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recovery:
    """``wait`` (put back, no retry used), ``retry`` or ``dead``; ``delay_ms``: when it is due again (None for
    a retry: the actor's backoff); ``turn_at``: the host's turn booked for it (``pipeline.politeness``)."""

    kind: Literal["wait", "retry", "dead"]
    delay_ms: int | None = None
    turn_at: float | None = None

    @property
    def options(self) -> dict[str, Any]:
        """The message options that carry it: the booked turn, if any."""
        return {} if self.turn_at is None else {"turn_at": self.turn_at}


def recovery(actor: dramatiq.Actor, error: BaseException) -> Recovery:
    """How ``actor`` recovers a check from ``error``."""
    if isinstance(error, NotYetError):
        return Recovery("wait", math.ceil(error.after * 1000), error.turn_at)
    if isinstance(error, RateLimitedError):
        return Recovery("wait", math.ceil(error.wait * 1000))
    throws = actor.options.get("throws") or ()
    if not getattr(error, "transient", not isinstance(error, throws)):
        return Recovery("dead")
    after = getattr(error, "after", None)
    return Recovery("retry", None if after is None else math.ceil(after * 1000))


def _stages_own(error: BaseException) -> bool:
    """A failure a stage describes (its kind, its delay), not a fault whose traceback is worth logging."""
    return hasattr(error, "transient") or hasattr(error, "after")


def turn_at() -> float | None:
    """The host's turn booked for the message being processed, when it was put back to wait for it."""
    message = CurrentMessage.get_current_message()
    return None if message is None else message.options.get("turn_at")


@contextmanager
def alone(actor: dramatiq.Actor, job: Any) -> Iterator[None]:
    """Run a single check's work: a wait puts its message back; a failure is raised for Dramatiq to retry (as a
    ``dramatiq.Retry`` with the server's delay, for a stage's own) or dead-letter (one of ``throws``)."""
    try:
        yield
    except Exception as error:
        what = recovery(actor, error)
        if what.kind == "wait":
            _put_back(actor, job, what)
            return
        if what.kind == "retry" and _stages_own(error):
            raise dramatiq.Retry(str(error), delay=what.delay_ms) from None
        raise


def _put_back(actor: dramatiq.Actor, job: Any, what: Recovery) -> None:
    """Put the message being processed back, due in ``what.delay_ms``, without using up a retry.

    The same message goes back (its id, its retry count): a new one sent instead would start its
    retries over, and a check that fails every time on a busy host would never reach the dead letters.
    """
    message = CurrentMessage.get_current_message()
    if message is None:  # called outside a worker (a test calling the actor directly)
        actor.send_with_options(args=(job,), delay=what.delay_ms, **what.options)
        return
    options = {key: value for key, value in message.options.items() if key != "turn_at"}
    actor.broker.enqueue(message.copy(options={**options, **what.options}), delay=what.delay_ms)


def hand_over(actor: dramatiq.Actor, job: Any, error: BaseException) -> None:
    """Send a check that failed in a batch on alone, as ``actor``'s message, as ``error`` calls for.

    A wait: due when the turn comes, no retry used.  A retry: due after the server's delay, else the
    actor's first backoff, one retry used, as if the actor had raised it.  Dead: dead-lettered with its
    reason, as ``actor``'s message, which ``pipeline dlq replay`` sends on.
    """
    what, key = recovery(actor, error), message_id(actor.actor_name, job)
    if what.kind == "dead":
        message = stage_message(actor.queue_name, actor.actor_name, job, key)
        actor.broker.dead_letter_message(message, error)  # type: ignore[attr-defined]
        return
    if what.kind == "wait":
        send(actor, job, key, delay=what.delay_ms, **what.options)
        return
    if not _stages_own(error):
        logger.warning("A check failed in a batch of %s; it goes on alone.", actor.actor_name, exc_info=error)
    send(actor, job, key, delay=what.delay_ms or _first_backoff(actor), retries=1)


def send(actor: dramatiq.Actor, job: Any, message_id: str, *, delay: int | None = None, **options: Any) -> None:
    """Enqueue ``job`` for ``actor`` as message ``message_id`` (``pipeline.jobs.stage_message``), due in
    ``delay`` ms."""
    actor.broker.enqueue(stage_message(actor.queue_name, actor.actor_name, job, message_id, **options), delay=delay)


def _first_backoff(actor: dramatiq.Actor) -> int:
    retries = next(m for m in actor.broker.middleware if isinstance(m, Retries))
    factor = actor.options.get("min_backoff", retries.min_backoff)
    ceiling = actor.options.get("max_backoff", retries.max_backoff)
    _, delay = compute_backoff(0, factor=factor, max_backoff=ceiling)
    return int(delay)
