"""One deadline for a whole exchange: connect, TLS, headers, body, every redirect hop.

Socket timeouts bound each read, not the exchange: a server that sends one
header line every 2 s never trips a 15 s read timeout.  The deadline is set
once per exchange (``with deadline(15):``) in a context variable, so every
socket operation made for it in this thread, through any connection of a
pool, is given at most the time that is left.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator
from contextlib import contextmanager

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("pipeline_deadline", default=None)


class DeadlineExceededError(TimeoutError):
    """The exchange's deadline passed."""


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Give the exchange made inside the block ``seconds`` in all (an enclosing deadline that ends sooner wins)."""
    ends = time.monotonic() + seconds
    outer = _DEADLINE.get()
    token = _DEADLINE.set(ends if outer is None else min(outer, ends))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def clip(timeout: float | None) -> float | None:
    """``timeout`` for one socket operation, cut to what is left of the deadline; raises when none is."""
    ends = _DEADLINE.get()
    if ends is None:
        return timeout
    left = ends - time.monotonic()
    if left <= 0:
        raise DeadlineExceededError("the exchange's deadline passed")
    return left if timeout is None else min(timeout, left)
