"""The rate-limiting algorithm: a quota as a queue in time (GCRA with reservations).

Pure functions over a small state and an explicit ``now``: no clock, no I/O,
so the same code decides in one process (:class:`MemoryStore`) and across
machines (:class:`KVStore`, one compare-and-set per decision), and property
tests drive it with a fake clock.

A :class:`Rate` is a provider's quota, e.g. 500 requests or 200,000 tokens per
minute.  The algorithm is the Generic Cell Rate Algorithm: each dimension
keeps a *theoretical arrival time* (TAT), the moment its bucket would be
full again.  A call of cost ``c`` advances the TAT by ``c`` intervals.

**The promise**, per dimension, for every interval ``[a, b]`` of start times::

    sum of the costs of calls started in [a, b]  <=  burst + rate * (b - a)

with ``burst = margin * limit`` (but at least one unit) and
``rate = margin * limit / period``.
That is exactly what a provider's token bucket (capacity ``limit``, refilled
at ``limit / period``, the model OpenAI documents) accepts with a
``1 - margin`` share to spare, so a server of that kind never sees more than
it allows.  In any one ``period`` at most ``2 * margin * limit`` start; a
server that counts fixed windows instead needs ``margin <= 0.5``.

**Reservations, not retries.**  A granted call may be told to wait: it holds
the next free slot, and whoever asks later queues behind it.  A call is
denied only when the queue already reaches more than ``max_wait`` seconds
ahead, and that test does not depend on the call's size, so a large request
is never starved by a stream of small ones.  A denial changes nothing and
says how long until the queue is short enough; asking again after that
wait is granted unless someone else took the room first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

#: Floating-point slack: a caller who waits exactly as long as it was told is admitted.
EPSILON = 1e-9


@dataclass(frozen=True)
class Rate:
    """``limit`` units per ``period`` seconds, of which we use ``margin``."""

    limit: float
    period: float = 60.0
    margin: float = 0.8

    def __post_init__(self) -> None:
        if not (self.limit > 0 and self.period > 0 and 0 < self.margin <= 1):
            raise ValueError(f"a rate needs limit > 0, period > 0 and 0 < margin <= 1, got {self}")

    @property
    def burst(self) -> float:
        """The most that may start at once: ``margin`` of the limit, but never less than one unit."""
        return max(self.limit * self.margin, min(self.limit, 1.0))

    @property
    def interval(self) -> float:
        """Seconds one unit occupies the queue: the rate is ``margin * limit`` per period."""
        return self.period / (self.limit * self.margin)

    @property
    def tolerance(self) -> float:
        """How far ahead of now a full bucket's TAT lies (GCRA's tau)."""
        return self.burst * self.interval


#: A quota: one rate per dimension, e.g. ``{"requests": Rate(500), "tokens": Rate(200_000)}``.
Quota = Mapping[str, Rate]


@dataclass(frozen=True)
class State:
    """What is stored per key: each dimension's TAT, and a block a server asked for."""

    tat: Mapping[str, float] = field(default_factory=dict)
    blocked_until: float = 0.0

    def to_json(self) -> dict[str, object]:
        return {"tat": dict(self.tat), "blocked_until": self.blocked_until}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> State:
        tat = data.get("tat") or {}
        assert isinstance(tat, dict)
        return cls({str(k): float(v) for k, v in tat.items()}, float(data.get("blocked_until") or 0.0))  # type: ignore[arg-type]

    def expires(self) -> float:
        """After this moment the state is the same as no state at all."""
        return max([self.blocked_until, *self.tat.values()])


@dataclass(frozen=True)
class Decision:
    """``granted``: start after ``wait`` seconds (the slot is yours).  Denied: ask again after ``wait``.

    ``at`` is the same moment on the clock the decision was made with.
    """

    granted: bool
    wait: float
    at: float


class TooLargeError(ValueError):
    """A cost bigger than a dimension's burst: no wait would ever admit it."""


def backlog(quota: Quota, state: State, now: float) -> float:
    """How many seconds the queue reaches beyond a full bucket (negative: room to spare)."""
    reach = [state.tat.get(name, now) - now - rate.tolerance for name, rate in quota.items()]
    return max([state.blocked_until - now, *reach])


def acquire(
    quota: Quota, state: State, now: float, costs: Mapping[str, float], max_wait: float
) -> tuple[State, Decision]:
    """Reserve a slot for a call of ``costs`` (per dimension), or deny it without changing anything."""
    for name, cost in costs.items():
        if name not in quota:
            raise KeyError(f"no rate for {name!r}; the quota has {sorted(quota)}")
        if cost < 0 or not math.isfinite(cost):
            raise ValueError(f"cost must be a finite number >= 0, got {name}={cost}")
        if cost > quota[name].burst + EPSILON:
            raise TooLargeError(f"{name}={cost:g} exceeds what the quota allows at once ({quota[name].burst:g})")
    # A negative max_wait asks for a slot that starts sooner than the end of a full bucket; at
    # -tolerance, only one that starts now.  Less than that could never be granted.
    max_wait = max(max_wait, -min(rate.tolerance for rate in quota.values()))
    queued = backlog(quota, state, now)
    if queued > max_wait + EPSILON:
        return state, Decision(False, queued - max_wait, now + queued - max_wait)
    start = max(now, state.blocked_until)
    for name, cost in costs.items():
        rate = quota[name]
        start = max(start, state.tat.get(name, now) + cost * rate.interval - rate.tolerance)
    tat = dict(state.tat)
    for name, cost in costs.items():
        tat[name] = max(tat.get(name, start), start) + cost * quota[name].interval
    return State(tat, state.blocked_until), Decision(True, start - now, start)


def charge(quota: Quota, state: State, now: float, extra: Mapping[str, float]) -> State:
    """Book usage found out after the fact (a response used more tokens than estimated).

    Only positive amounts count: the provider charged its own estimate up front,
    so using less than ours returns nothing.
    """
    tat = dict(state.tat)
    for name, amount in extra.items():
        if amount > 0 and name in quota:
            tat[name] = max(tat.get(name, now), now) + amount * quota[name].interval
    return State(tat, state.blocked_until)


def observe(
    quota: Quota,
    state: State,
    now: float,
    *,
    remaining: Mapping[str, float] | None = None,
    reset: Mapping[str, float] | None = None,
    retry_after: float | None = None,
) -> State:
    """Fold in what the server said: it only ever makes the state stricter.

    ``remaining[d]`` (``x-ratelimit-remaining-*``): we may not think we have
    more than ``margin`` of what the server has left.  A dimension at 0 waits
    for ``reset[d]`` (``x-ratelimit-reset-*``), or one unit's worth of refill
    when no reset was given.  ``retry_after`` (a 429's ``Retry-After``)
    blocks the key until then.
    """
    tat = dict(state.tat)
    blocked = state.blocked_until
    if retry_after is not None and 0 < retry_after < math.inf:
        blocked = max(blocked, now + retry_after)
    for name, left in (remaining or {}).items():
        rate = quota.get(name)
        if rate is None or not math.isfinite(left):
            continue
        floor = now + rate.tolerance - max(left, 0.0) * rate.margin * rate.interval
        tat[name] = max(tat.get(name, now), floor)
        if left <= 0:
            refill = (reset or {}).get(name, rate.period / rate.limit)
            blocked = max(blocked, now + min(refill, rate.period))  # min() also drops a NaN
    return State(tat, blocked)
