"""The quota algorithm, proven by stateful property tests, and its edges by example."""

from __future__ import annotations

import pytest
from hypothesis import settings

from pipeline.ratelimit import Rate, TooLargeError
from pipeline.ratelimit.quota import State, acquire, observe
from tests.ratelimit_model import QuotaMachine

QuotaMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
TestQuotaInMemory = QuotaMachine.TestCase


QUOTA = {"requests": Rate(10, 60.0, 0.8)}  # 8 at once, then one every 7.5 s


def test_burst_then_one_per_interval() -> None:
    state, now = State(), 0.0
    waits = []
    for _ in range(10):
        state, decision = acquire(QUOTA, state, now, {"requests": 1}, max_wait=60)
        waits.append(decision.wait)
    assert waits == [0.0] * 8 + [7.5, 15.0]


def test_denied_without_change_and_told_when() -> None:
    state = State()
    for _ in range(9):  # eight at once, the ninth holds the slot 7.5 s ahead
        state, _ = acquire(QUOTA, state, 0.0, {"requests": 1}, max_wait=0)
    same, denied = acquire(QUOTA, state, 0.0, {"requests": 1}, max_wait=0)
    assert same == state
    assert not denied.granted and denied.wait == pytest.approx(7.5)
    _, later = acquire(QUOTA, state, denied.at, {"requests": 1}, max_wait=0)
    assert later.granted and later.at == pytest.approx(15.0)


def test_a_large_call_queues_like_a_small_one() -> None:
    quota = {"tokens": Rate(1000, 60.0, 1.0)}
    state = State()
    state, _ = acquire(quota, state, 0.0, {"tokens": 900}, max_wait=0)
    _, small = acquire(quota, state, 0.0, {"tokens": 10}, max_wait=0)
    _, large = acquire(quota, state, 0.0, {"tokens": 1000}, max_wait=0)
    assert small.granted and large.granted
    assert small.wait == pytest.approx(0.0)
    assert large.wait == pytest.approx(54.0)  # 900 of 1000 used: 900 tokens take 54 s to come back


def test_more_than_a_burst_is_refused_outright() -> None:
    with pytest.raises(TooLargeError, match="exceeds"):
        acquire(QUOTA, State(), 0.0, {"requests": 9}, max_wait=1e9)


def test_retry_after_blocks_the_key() -> None:
    state = observe(QUOTA, State(), 100.0, retry_after=20.0)
    _, denied = acquire(QUOTA, state, 100.0, {"requests": 1}, max_wait=5)
    assert not denied.granted and denied.wait == pytest.approx(15.0)
    _, granted = acquire(QUOTA, state, 100.0, {"requests": 1}, max_wait=30)
    assert granted.granted and granted.at == pytest.approx(120.0)


def test_remaining_header_tightens_only() -> None:
    state = observe(QUOTA, State(), 0.0, remaining={"requests": 2})
    granted = 0
    while True:
        state, decision = acquire(QUOTA, state, 0.0, {"requests": 1}, max_wait=0)
        if not decision.granted or decision.wait > 0:
            break
        granted += 1
    assert granted == 1  # 80% of the 2 the server has left
    assert observe(QUOTA, state, 0.0, remaining={"requests": 10}) == state
