"""A stateful hypothesis model of the quota limiter, run on any store.

The machine drives a :class:`~pipeline.ratelimit.Limiter` with a fake
clock that moves forwards and backwards, two keys, calls of every size
and servers that answer with headers, and checks after each step:

- the promise: per key and dimension, the costs of calls started in any
  interval ``[a, b]`` never exceed ``burst + rate * (b - a)``;
- a denial changes nothing and its wait is enough (asking again after it
  is granted), a grant's wait is bounded;
- the decision never depends on the size of the call (no starvation);
- a key's decisions are those it would get alone (keys are isolated);
- nothing starts before a block a server asked for.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pipeline.ratelimit import Limiter, MemoryStore, Rate
from pipeline.ratelimit.quota import EPSILON
from pipeline.ratelimit.store import Store

KEYS = ("alpha", "beta")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def promise_holds(starts: list[tuple[float, float]], rate: Rate) -> tuple[bool, str]:
    """Every interval between two start times holds at most burst + rate * length."""
    events = sorted(starts)
    for i, (a, _) in enumerate(events):
        total = 0.0
        for b, cost in events[i:]:
            total += cost
            allowed = rate.burst + (b - a) / rate.interval
            if total > allowed + 1e-6 * max(1.0, allowed):
                return False, f"{total:g} started in [{a:.6f}, {b:.6f}], allowed {allowed:g}"
    return True, ""


class QuotaMachine(RuleBasedStateMachine):
    """Subclasses say which store: ``make_store(clock)``."""

    make_store: Callable[[Clock], Store] = staticmethod(lambda clock: MemoryStore(clock))

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.grants: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
        self.blocked: dict[str, float] = defaultdict(float)
        self.latest = self.clock.now

    @initialize(
        requests=st.integers(1, 50),
        tokens=st.integers(100, 10_000),
        period=st.sampled_from([1.0, 10.0, 60.0]),
        margin=st.sampled_from([0.5, 0.8, 1.0]),
    )
    def setup(self, requests: int, tokens: int, period: float, margin: float) -> None:
        self.quota = {"requests": Rate(requests, period, margin), "tokens": Rate(tokens, period, margin)}
        self.limiter = Limiter(self.make_store(self.clock), self.quota, clock=self.clock)
        # Each key alone, for the isolation check: the same calls, nobody else's.
        self.alone = {key: Limiter(MemoryStore(self.clock), self.quota, clock=self.clock) for key in KEYS}

    def _probe(self, key: str, costs: dict[str, float], max_wait: float) -> bool:
        """Would this call be granted now?  Asked of a throwaway copy of the key's state."""
        copy = Limiter(MemoryStore(self.clock), self.quota, clock=self.clock)
        state = self.limiter.store.update(key, lambda raw: (None, 0.0, raw))
        if state is not None:
            copy.store.update(key, lambda raw: (state, 1e9, None))
        return copy.decide(key, costs, max_wait).granted

    @rule(seconds=st.floats(0, 90, allow_nan=False))
    def advance(self, seconds: float) -> None:
        self.clock.now += seconds
        self.latest = max(self.latest, self.clock.now)

    @rule(seconds=st.floats(0, 30, allow_nan=False))
    def go_back(self, seconds: float) -> None:
        # Steps back of up to a minute from the latest time seen (limiter.BACKWARDS_SLACK covers them).
        self.clock.now = max(self.clock.now - seconds, self.latest - 60.0)

    @rule(
        key=st.sampled_from(KEYS),
        share=st.floats(0, 1, allow_nan=False),
        max_wait=st.sampled_from([-5.0, -0.5, 0.0, 0.5, 5.0, 60.0]),
    )
    def call(self, key: str, share: float, max_wait: float) -> None:
        costs = {"requests": 1.0, "tokens": math.floor(share * self.quota["tokens"].burst)}
        small = {"requests": 1.0, "tokens": 0.0}
        granted_if_small = self._probe(key, small, max_wait)
        before = self.limiter.store.update(key, lambda raw: (None, 0.0, raw))
        decision = self.limiter.decide(key, costs, max_wait)
        alone = self.alone[key].decide(key, costs, max_wait)
        assert decision == alone, f"key {key} decided {decision} but alone it would be {alone}"
        assert decision.granted == granted_if_small, "the size of a call changed whether it was granted"
        if decision.granted:
            assert decision.wait >= -EPSILON
            longest = max(cost * self.quota[name].interval for name, cost in costs.items())
            asked = max(max_wait, -min(rate.tolerance for rate in self.quota.values()))
            assert decision.wait <= max(0.0, asked + longest) + 1e-6, f"waited {decision.wait}, limit {asked}+{longest}"
            assert decision.at >= self.blocked[key] - 1e-6, "started inside a block the server asked for"
            for name, cost in costs.items():
                self.grants[key, name].append((decision.at, cost))
        else:
            after = self.limiter.store.update(key, lambda raw: (None, 0.0, raw))
            assert after == before, "a denied call changed the state"
            assert decision.wait > 0
            saved = self.clock.now
            self.clock.now = decision.at
            assert self._probe(key, costs, max_wait), f"denied again after waiting the {decision.wait}s it was told"
            self.clock.now = saved

    @rule(key=st.sampled_from(KEYS), seconds=st.floats(0.1, 120, allow_nan=False))
    def server_says_retry_after(self, key: str, seconds: float) -> None:
        self.limiter.observe(key, retry_after=seconds)
        self.alone[key].observe(key, retry_after=seconds)
        self.blocked[key] = max(self.blocked[key], self.clock.now + seconds)

    @rule(key=st.sampled_from(KEYS), left=st.floats(0, 1, allow_nan=False), reset=st.floats(0, 60, allow_nan=False))
    def server_says_remaining(self, key: str, left: float, reset: float) -> None:
        remaining = {name: round(left * rate.limit) for name, rate in self.quota.items()}
        resets = dict.fromkeys(self.quota, reset)
        self.limiter.observe(key, remaining=remaining, reset=resets)
        self.alone[key].observe(key, remaining=remaining, reset=resets)

    @rule(key=st.sampled_from(KEYS), share=st.floats(0, 1, allow_nan=False))
    def response_used_more_than_estimated(self, key: str, share: float) -> None:
        extra = {"tokens": math.floor(share * self.quota["tokens"].burst)}
        self.limiter.charge(key, extra)
        self.alone[key].charge(key, extra)

    @precondition(lambda self: hasattr(self, "quota"))
    @invariant()
    def never_more_than_the_promise(self) -> None:
        for (key, name), starts in self.grants.items():
            holds, why = promise_holds(starts, self.quota[name])
            assert holds, f"{key}/{name}: {why}"
