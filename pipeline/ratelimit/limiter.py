"""A quota per key, kept in a store, asked from worker threads.

:class:`Limiter` joins the pure algorithm (:mod:`pipeline.ratelimit.quota`)
to a store: every decision is one atomic read-decide-write of the key's
state, so however many workers share the store they draw from one quota.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping

from pipeline.ratelimit import quota as algorithm
from pipeline.ratelimit.quota import Decision, Quota, State
from pipeline.ratelimit.store import Store


class RateLimitedError(Exception):
    """Denied: the key's queue is longer than the caller will wait.  Ask again after ``wait`` seconds."""

    def __init__(self, key: str, wait: float) -> None:
        super().__init__(f"{key}: rate limited, ask again in {wait:.2f}s")
        self.key = key
        self.wait = wait


def _load(raw: bytes | None) -> State:
    return State() if raw is None else State.from_json(json.loads(raw))


#: How far the clock may step back and still find the state it would need: kept this long past its use.
BACKWARDS_SLACK = 60.0


def _lifetime(state: State, now: float) -> float:
    """Seconds until the state means nothing (every TAT and block in the past), plus the slack."""
    return max(1.0, state.expires() - now) + BACKWARDS_SLACK


def _dump(state: State) -> bytes:
    return json.dumps(state.to_json(), separators=(",", ":")).encode()


class Limiter:
    """``quota`` for every key of one kind (each API key, each domain), in ``store``.

    ``clock`` is the store's by default (the NATS server's time, for a store
    shared between machines); ``sleep`` is how a granted caller waits for its slot.
    """

    def __init__(
        self,
        store: Store,
        quota: Quota,
        *,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store = store
        self.quota = dict(quota)
        self.clock = clock or store.clock
        self.sleep = sleep

    def decide(self, key: str, costs: Mapping[str, float], max_wait: float = 0.0) -> Decision:
        """Reserve a slot or be denied, without waiting for it."""

        def change(raw: bytes | None) -> tuple[bytes | None, float, Decision]:
            now = self.clock()
            state, decision = algorithm.acquire(self.quota, _load(raw), now, costs, max_wait)
            return (_dump(state) if decision.granted else None), _lifetime(state, now), decision

        return self.store.update(key, change)

    def acquire(self, key: str, costs: Mapping[str, float], max_wait: float) -> float:
        """Wait for a slot and return the seconds waited; :class:`RateLimitedError` if denied."""
        decision = self.decide(key, costs, max_wait)
        if not decision.granted:
            raise RateLimitedError(key, decision.wait)
        if decision.wait > 0:
            self.sleep(decision.wait)
        return decision.wait

    def charge(self, key: str, extra: Mapping[str, float]) -> None:
        """Book usage beyond the estimate a slot was reserved for."""
        if not any(amount > 0 for amount in extra.values()):
            return
        self._apply(key, lambda state, now: algorithm.charge(self.quota, state, now, extra))

    def observe(
        self,
        key: str,
        *,
        remaining: Mapping[str, float] | None = None,
        reset: Mapping[str, float] | None = None,
        retry_after: float | None = None,
    ) -> None:
        """Tighten the key's state with what the server's headers said."""
        self._apply(
            key,
            lambda state, now: algorithm.observe(
                self.quota, state, now, remaining=remaining, reset=reset, retry_after=retry_after
            ),
        )

    def _apply(self, key: str, update: Callable[[State, float], State]) -> None:
        def change(raw: bytes | None) -> tuple[bytes | None, float, None]:
            before, now = _load(raw), self.clock()
            after = update(before, now)
            return (None if after == before else _dump(after)), _lifetime(after, now), None

        self.store.update(key, change)
