"""Rate limiter benchmark: decisions per second, and how close the achieved rate gets to the quota.

Decisions per second, with 1, 4 and 16 concurrent workers (threads for the
in-memory store, processes with a connection each for the shared stores),
all on one key, every call granted:

- ``quota/memory``: the GCRA quota on :class:`MemoryStore` (one process);
- ``quota/nats-kv``: the same on :class:`KVStore` (compare-and-set on NATS KV);
- ``dramatiq/nats-kv``: Dramatiq's ``BucketRateLimiter`` on ``NatsRateLimiterBackend``;
- ``dramatiq/redis``: the peer, Dramatiq's ``BucketRateLimiter`` on its ``RedisBackend``
  (needs Redis on 127.0.0.1:6379; skipped without it).

Then the achieved rate: W processes take slots as fast as the quota lets
them (waiting for granted slots); the calls made are compared with the
quota and with what the limiter's promise allows (burst + rate x
duration), and the fullest interval of the run with its limit.

    python bench/ratelimit.py
    python bench/ratelimit.py --seconds 5 --quota 500
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.nats_server import NatsServer
from pipeline.ratelimit import KVStore, Limiter, MemoryStore, NatsRateLimiterBackend, Rate

HUGE = {"requests": Rate(1e12, 1.0, 1.0)}  # every call granted: the decision itself is measured


def _until(start_at: float) -> None:
    time.sleep(max(0.0, start_at - time.time()))


def decide_loop(kind: str, url: str, bucket: str, seconds: float, start_at: float) -> int:
    """One worker: as many decisions as it can make in ``seconds``; returns how many."""
    close = lambda: None  # noqa: E731
    if kind == "quota/nats-kv":
        store = KVStore.connect(url, bucket)
        limiter = Limiter(store, HUGE)
        step, close = (lambda: limiter.decide("bench", {"requests": 1})), store.close
    elif kind == "dramatiq/nats-kv":
        from dramatiq.rate_limits import BucketRateLimiter

        backend = NatsRateLimiterBackend(url=url, bucket=bucket)
        bucket_limiter = BucketRateLimiter(backend, "bench", limit=10**12, bucket=1000)
        step, close = (lambda: bucket_limiter._acquire()), backend.close
    elif kind == "dramatiq/redis":
        from dramatiq.rate_limits import BucketRateLimiter
        from dramatiq.rate_limits.backends import RedisBackend

        bucket_limiter = BucketRateLimiter(RedisBackend(url=url), bucket + "-bench", limit=10**12, bucket=1000)
        step = lambda: bucket_limiter._acquire()  # noqa: E731
    else:
        raise ValueError(kind)
    step()  # connect and create before the clock starts
    _until(start_at)
    count, deadline = 0, time.time() + seconds
    while time.time() < deadline:
        step()
        count += 1
    close()
    return count


def memory_rate(workers: int, seconds: float) -> float:
    limiter = Limiter(MemoryStore(), HUGE)
    counts = [0] * workers
    deadline = time.time() + seconds

    def work(n: int) -> None:
        while time.time() < deadline:
            limiter.decide("bench", {"requests": 1})
            counts[n] += 1

    threads = [threading.Thread(target=work, args=(n,)) for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / seconds


def shared_rate(pool: ProcessPoolExecutor, kind: str, url: str, workers: int, seconds: float) -> float:
    bucket = "b" + uuid.uuid4().hex[:8]
    start_at = time.time() + 3  # time for every process to connect
    futures = [pool.submit(decide_loop, kind, url, bucket, seconds, start_at) for _ in range(workers)]
    return sum(f.result() for f in futures) / seconds


def take_slots(url: str, bucket: str, limit: float, seconds: float, start_at: float) -> list[float]:
    """One worker taking slots of a real quota as they come; returns their start times."""
    store = KVStore.connect(url, bucket)
    limiter = Limiter(store, {"requests": Rate(limit, 1.0, 0.8)})
    starts = []
    _until(start_at)
    deadline = start_at + seconds
    while time.time() < deadline:
        decision = limiter.decide("quota", {"requests": 1}, max_wait=0.5)
        if decision.granted:
            starts.append(decision.at)
            time.sleep(max(0.0, decision.at - time.time()))
        else:
            time.sleep(decision.wait)
    store.close()
    return starts


def worst_window(starts: list[float], rate: Rate) -> float:
    """The fullest interval between two starts, as a share of what the promise allows in it (<= 100%)."""
    worst = 0.0
    for i, a in enumerate(starts):
        for j in range(i, len(starts)):
            worst = max(worst, (j - i + 1) / (rate.burst + (starts[j] - a) / rate.interval))
    return worst


def redis_url() -> str | None:
    try:
        import redis

        redis.Redis.from_url("redis://127.0.0.1:6379/15").ping()
        return "redis://127.0.0.1:6379/15"
    except Exception:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--quota", type=float, default=200.0, help="requests per second for the achieved-rate run")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()

    rows: dict[str, dict[int, float]] = {"quota/memory": {}}
    for workers in args.workers:
        rows["quota/memory"][workers] = memory_rate(workers, args.seconds)
    redis = redis_url()
    context = multiprocessing.get_context("spawn")
    with (
        tempfile.TemporaryDirectory() as home,
        NatsServer(Path(home) / "nats") as server,
        ProcessPoolExecutor(max(args.workers), mp_context=context) as pool,
    ):
        kinds = [("quota/nats-kv", server.url), ("dramatiq/nats-kv", server.url)]
        kinds += [("dramatiq/redis", redis)] if redis else []
        for kind, url in kinds:
            rows[kind] = {w: shared_rate(pool, kind, url, w, args.seconds) for w in args.workers}

        achieved = {}
        rate = Rate(args.quota, 1.0, 0.8)
        for workers in args.workers:
            bucket, start_at = "q" + uuid.uuid4().hex[:8], time.time() + 3
            futures = [
                pool.submit(take_slots, server.url, bucket, args.quota, args.seconds * 2, start_at)
                for _ in range(workers)
            ]
            starts = sorted(t for f in futures for t in f.result())
            span = starts[-1] - starts[0]
            allowed = rate.burst + span / rate.interval  # what the limiter's promise allows over the run
            achieved[workers] = (len(starts), span, len(starts) / allowed, worst_window(starts, rate))

    cores = os.cpu_count()
    print(f"\nDecisions per second on one key, {args.seconds:g} s each, {cores} cores (higher is better)\n")
    print("| limiter/store | " + " | ".join(f"{w} worker{'s' * (w > 1)}" for w in args.workers) + " |")
    print("|---|" + "---:|" * len(args.workers))
    for kind, by_workers in rows.items():
        print(f"| {kind} | " + " | ".join(f"{by_workers[w]:,.0f}" for w in args.workers) + " |")
    if "dramatiq/redis" in rows:
        ratios = [rows["quota/nats-kv"][w] / rows["dramatiq/redis"][w] for w in args.workers]
        print("| quota/nats-kv vs dramatiq/redis | " + " | ".join(f"{r:.2f}x" for r in ratios) + " |")
        ratios = [rows["dramatiq/nats-kv"][w] / rows["dramatiq/redis"][w] for w in args.workers]
        print("| dramatiq/nats-kv vs dramatiq/redis | " + " | ".join(f"{r:.2f}x" for r in ratios) + " |")
    print(f"\nSlots taken from a {args.quota:g}/s quota on NATS KV (margin 0.8: at most {rate.burst:g} at once,")
    print(f"then {rate.burst:g}/s), {args.seconds * 2:g} s per run\n")
    print("| workers | calls | calls/s | of quota | of what the limiter allows | fullest interval vs its limit |")
    print("|---:|---:|---:|---:|---:|---:|")
    for workers, (calls, span, used, worst) in achieved.items():
        per_second = calls / span
        print(f"| {workers} | {calls} | {per_second:.1f} | {per_second / args.quota:.1%} | {used:.1%} | {worst:.1%} |")


if __name__ == "__main__":
    main()
