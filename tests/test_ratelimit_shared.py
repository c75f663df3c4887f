"""The limiter on NATS KV: the same model as in memory, and many workers sharing one quota."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import settings

from pipeline.nats_server import NatsServer
from pipeline.ratelimit import KVStore, Limiter, MemoryStore, Rate
from pipeline.ratelimit.store import kv_key
from tests import ratelimit_hammer
from tests.conftest import ROOT
from tests.ratelimit_model import QuotaMachine, promise_holds


@pytest.fixture
def kv_store(nats_server: NatsServer) -> Iterator[KVStore]:
    store = KVStore.connect(nats_server.url, "rl" + uuid.uuid4().hex[:8])
    yield store
    store.close()


def test_the_model_holds_on_nats_kv(kv_store: KVStore) -> None:
    class OnNats(QuotaMachine):
        # Every example gets fresh keys in the shared bucket, so examples do not see each other.
        def __init__(self) -> None:
            super().__init__()
            run = uuid.uuid4().hex[:6]
            self.make_store = lambda clock: _Prefixed(kv_store, run)

    OnNats.TestCase.settings = settings(max_examples=15, stateful_step_count=25, deadline=None)
    OnNats.TestCase().runTest()


class _Prefixed:
    def __init__(self, store: KVStore, prefix: str) -> None:
        self.store, self.prefix = store, prefix

    def update(self, key, change):  # type: ignore[no-untyped-def]
        return self.store.update(f"{self.prefix}.{key}", change)


def test_keys_become_valid_kv_keys_one_to_one() -> None:
    assert kv_key("llm/key-1a2b") == "k.llm/key-1a2b"
    assert kv_key("rate@123:x y") == "k.rate=40123=3Ax=20y"
    names = ["", ".", "report", "report.", ".report", "a..b", "a=2Eb", "a.b", "ü"]
    keys = [kv_key(name) for name in names]
    assert len(set(keys)) == len(names)
    assert all(re.fullmatch(r"[-/_=.a-zA-Z0-9]+", k) and not k.endswith(".") and ".." not in k for k in keys)


def test_threads_in_two_processes_never_exceed_the_quota_together(nats_server: NatsServer) -> None:
    bucket = "rl" + uuid.uuid4().hex[:8]
    command = [sys.executable, "-m", "tests.ratelimit_hammer", nats_server.url, bucket, "8", "3"]
    others = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    store = KVStore.connect(nats_server.url, bucket)
    try:
        mine = ratelimit_hammer.hammer(store, threads=8, seconds=3)
    finally:
        store.close()
    out, _ = others.communicate(timeout=60)
    assert others.returncode == 0
    theirs = json.loads(out)["grants"]
    grants = mine + [tuple(g) for g in theirs]
    assert mine and theirs, "both processes must have been granted calls"
    for column, name in ((1, "requests"), (2, "tokens")):
        holds, why = promise_holds([(g[0], g[column]) for g in grants], ratelimit_hammer.QUOTA[name])
        assert holds, f"{name}: {why}"


def test_memory_store_forgets_expired_state() -> None:
    now = [0.0]
    store = MemoryStore(clock=lambda: now[0])
    limiter = Limiter(store, {"requests": Rate(1, 10.0, 1.0)}, clock=lambda: now[0])
    assert limiter.decide("k", {"requests": 1}).wait == 0
    assert limiter.decide("k", {"requests": 1}).wait == pytest.approx(10.0)
    now[0] = 100.0
    assert store.update("k", lambda raw: (None, 0.0, raw)) is None  # expired, not just stale


def test_machines_with_skewed_clocks_share_the_servers_time(nats_server: NatsServer) -> None:
    bucket = "rl" + uuid.uuid4().hex[:8]
    honest, fast = KVStore.connect(nats_server.url, bucket), KVStore.connect(nats_server.url, bucket)
    fast._local_time = lambda: time.time() + 30  # this machine's clock is 30 s ahead
    try:
        quota = {"requests": Rate(10, 60.0, 1.0)}
        first, second = Limiter(honest, quota), Limiter(fast, quota)
        grants = [limiter.decide("shared", {"requests": 1}) for limiter in (first, second) * 10]
        assert abs(honest.clock() - fast.clock()) < 0.05
        assert sum(g.granted and g.wait < 1 for g in grants) == 10, "ten slots at once, not ten per machine"
    finally:
        honest.close()
        fast.close()
