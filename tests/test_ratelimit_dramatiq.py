"""Dramatiq's own rate limiters and barrier on the NATS KV backend."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
from dramatiq.rate_limits import Barrier, BucketRateLimiter, ConcurrentRateLimiter, WindowRateLimiter
from dramatiq.rate_limits.backends import StubBackend
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

from pipeline.nats_server import NatsServer
from pipeline.ratelimit import NatsRateLimiterBackend


@pytest.fixture
def backend(nats_server: NatsServer) -> Iterator[NatsRateLimiterBackend]:
    backend = NatsRateLimiterBackend(url=nats_server.url, bucket="dl" + uuid.uuid4().hex[:8])
    yield backend
    backend.close()


def run_threads(count: int, target: object) -> None:
    threads = [threading.Thread(target=target) for _ in range(count)]  # type: ignore[arg-type]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_concurrent_rate_limiter_is_a_mutex(backend: NatsRateLimiterBackend) -> None:
    mutex = ConcurrentRateLimiter(backend, "mutex-" + uuid.uuid4().hex, limit=1)
    holders, most, done = [0], [0], Counter()
    lock = threading.Lock()

    def work() -> None:
        for _ in range(10):
            with mutex.acquire(raise_on_failure=False) as acquired:
                if not acquired:
                    done["refused"] += 1
                    continue
                with lock:
                    holders[0] += 1
                    most[0] = max(most[0], holders[0])
                time.sleep(0.005)
                with lock:
                    holders[0] -= 1
                done["ran"] += 1

    run_threads(8, work)
    assert most[0] == 1
    assert done["ran"] >= 1 and done["ran"] + done["refused"] == 80


def test_concurrent_rate_limiter_releases(backend: NatsRateLimiterBackend) -> None:
    limiter = ConcurrentRateLimiter(backend, "pair-" + uuid.uuid4().hex, limit=2)
    with limiter.acquire(), limiter.acquire(), limiter.acquire(raise_on_failure=False) as third:
        assert not third
    with limiter.acquire(raise_on_failure=False) as again:
        assert again


def test_bucket_rate_limiter_counts_per_bucket(backend: NatsRateLimiterBackend) -> None:
    limiter = BucketRateLimiter(backend, "bucket-" + uuid.uuid4().hex, limit=3, bucket=1000)
    per_bucket: Counter[int] = Counter()
    lock = threading.Lock()

    def work() -> None:
        for _ in range(20):
            before = int(backend.store.clock())
            with limiter.acquire(raise_on_failure=False) as acquired:
                after = int(backend.store.clock())
                if acquired and before == after:  # surely counted in this second's bucket
                    with lock:
                        per_bucket[before] += 1
            time.sleep(0.01)

    run_threads(6, work)
    assert sum(per_bucket.values()) >= 3
    assert max(per_bucket.values()) <= 3, dict(per_bucket)


def test_window_rate_limiter_holds_in_every_window(backend: NatsRateLimiterBackend) -> None:
    limiter = WindowRateLimiter(backend, "window-" + uuid.uuid4().hex, limit=4, window=2)
    granted: list[float] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(30):
            with limiter.acquire(raise_on_failure=False) as acquired:
                if acquired:
                    with lock:
                        granted.append(time.time())
            time.sleep(0.01)

    run_threads(6, work)
    seconds = Counter(int(t) for t in granted)
    assert sum(seconds.values()) >= 4
    for second in seconds:  # the limiter's windows are whole seconds, `window` of them
        assert seconds[second] + seconds[second - 1] <= 4, dict(seconds)


def test_barrier_releases_all_parties(backend: NatsRateLimiterBackend) -> None:
    barrier = Barrier(backend, "barrier-" + uuid.uuid4().hex, ttl=30_000)
    assert barrier.create(parties=3)
    assert not barrier.create(parties=3)
    results: list[bool] = []

    def party() -> None:
        results.append(barrier.wait(timeout=10_000))

    def patient_party() -> None:
        results.append(barrier.wait())  # no timeout: as long as it takes

    threads = [threading.Thread(target=patient_party), threading.Thread(target=party)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    party()
    for thread in threads:
        thread.join(10)
    assert results == [True, True, True]


def test_barrier_times_out_when_a_party_is_missing(backend: NatsRateLimiterBackend) -> None:
    barrier = Barrier(backend, "barrier-" + uuid.uuid4().hex, ttl=30_000)
    barrier.create(parties=2)
    started = time.monotonic()
    assert barrier.wait(timeout=300) is False
    assert time.monotonic() - started >= 0.3


def test_counters_expire(backend: NatsRateLimiterBackend) -> None:
    key = "short-" + uuid.uuid4().hex
    assert backend.add(key, 1, ttl=200)
    assert not backend.add(key, 1, ttl=200)
    time.sleep(0.25)
    assert backend.add(key, 1, ttl=200)


KEYS = ("a", "b", "u@1")  # counters (add, incr, decr); windows (incr_and_sum) are keys of their own kind


def test_backend_matches_dramatiqs_stub_backend(backend: NatsRateLimiterBackend) -> None:
    """Any sequence of operations gives the same answers as Dramatiq's in-memory reference."""

    class SameAsStub(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.run = uuid.uuid4().hex[:8]
            self.stub = StubBackend()

        def key(self, name: str) -> str:
            return f"{self.run}-{name}"

        @rule(key=st.sampled_from(KEYS), value=st.integers(0, 5))
        def add(self, key: str, value: int) -> None:
            assert backend.add(self.key(key), value, 60_000) == self.stub.add(self.key(key), value, 60_000)

        @rule(key=st.sampled_from(KEYS), amount=st.integers(0, 3), maximum=st.integers(0, 6))
        def incr(self, key: str, amount: int, maximum: int) -> None:
            got = backend.incr(self.key(key), amount, maximum, 60_000)
            assert got == self.stub.incr(self.key(key), amount, maximum, 60_000)

        @rule(key=st.sampled_from(KEYS), amount=st.integers(0, 3), minimum=st.integers(-2, 3))
        def decr(self, key: str, amount: int, minimum: int) -> None:
            got = backend.decr(self.key(key), amount, minimum, 60_000)
            assert got == self.stub.decr(self.key(key), amount, minimum, 60_000)

        @rule(which=st.sampled_from(["w@1", "w@2"]), amount=st.integers(1, 3), maximum=st.integers(0, 8))
        def incr_and_sum(self, which: str, amount: int, maximum: int) -> None:
            def keys() -> list[str]:
                return [self.key("w@1"), self.key("w@2")]

            got = backend.incr_and_sum(self.key(which), keys, amount, maximum, 60_000)
            assert got == self.stub.incr_and_sum(self.key(which), keys, amount, maximum, 60_000)

    SameAsStub.TestCase.settings = settings(max_examples=25, stateful_step_count=20, deadline=None)
    SameAsStub.TestCase().runTest()
