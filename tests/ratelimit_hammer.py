"""Hammer one shared quota from many threads; print the grants as JSON.

``python -m tests.ratelimit_hammer URL BUCKET THREADS SECONDS`` is one of the
processes in the cross-process test: each thread asks for slots as fast as
it can and records when each granted call may start.
"""

from __future__ import annotations

import json
import sys
import threading
import time

from pipeline.ratelimit import KVStore, Limiter, Rate

QUOTA = {"requests": Rate(40, 1.0, 0.8), "tokens": Rate(4000, 1.0, 0.8)}
KEY = "shared-key"


def hammer(store: KVStore, threads: int, seconds: float) -> list[tuple[float, float, float]]:
    limiter = Limiter(store, QUOTA)
    grants: list[tuple[float, float, float]] = []
    lock = threading.Lock()
    deadline = time.time() + seconds

    def work(n: int) -> None:
        size = 10 + 90 * (n % 4)  # small and large calls mixed
        while time.time() < deadline:
            decision = limiter.decide(KEY, {"requests": 1, "tokens": size}, max_wait=0.2)
            if decision.granted:
                with lock:
                    grants.append((decision.at, 1.0, float(size)))
                time.sleep(max(0.0, decision.at - time.time()))
            else:
                time.sleep(decision.wait)

    pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return grants


if __name__ == "__main__":
    url, bucket, threads, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    store = KVStore.connect(url, bucket)
    try:
        print(json.dumps({"grants": hammer(store, threads, seconds), "conflicts": store.conflicts}))
    finally:
        store.close()
