"""Several checks to a message: how many, and how big.

A message per check cost more than most checks' own work: Dramatiq's handling, NATS storing,
delivering and acknowledging it, and a commit each.  So where checks travel together (the
events one pull of the ingest brings, and what a batch hands on to the next stage) they go up to
``MAX_CHECKS`` to a message, each message under the payload NATS takes (``groups``), and a batch
runs its checks at once on its process's batch threads (``each``).  A check of a batch that fails
goes on alone, as its stage's own message (``actors.batches``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from typing import TypeVar

from pipeline.policy import TIME_LIMIT_SECONDS

T = TypeVar("T")

#: The most checks one message carries.
MAX_CHECKS = 16
#: The largest message: NATS' default max payload, less room for headers (bytes).
MAX_BYTES = 1024 * 1024 - 8192


def groups(items: list[T], size: Callable[[T], int]) -> Iterator[list[T]]:
    """``items`` in order, in groups of up to ``MAX_CHECKS`` whose ``size`` (bytes) adds up to at most
    ``MAX_BYTES``; an item over ``MAX_BYTES`` alone is a group of its own (the caller refuses it)."""
    group: list[T] = []
    total = 0
    for item in items:
        bytes_ = size(item)
        if group and (len(group) == MAX_CHECKS or total + bytes_ > MAX_BYTES):
            yield group
            group, total = [], 0
        group.append(item)
        total += bytes_
    if group:
        yield group


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


#: How long a batch waits for its checks: what is still running then (a page that holds the parser in C
#: code for minutes, say) goes on alone, so it holds up only itself, with room left under the time limit.
WAIT_SECONDS = TIME_LIMIT_SECONDS - 15


def each(work: Callable[[T], None], jobs: list[T], timeout: float = WAIT_SECONDS) -> list[BaseException | None]:
    """``work(job)`` for every job at once; per job, in order, what it raised (None: it finished), or a
    ``TimeoutError`` for one still running after ``timeout`` seconds (it runs on; it cannot be stopped)."""
    global _pool
    with _pool_lock:
        if _pool is None:  # a process's batch threads, started as needed: room for 8 worker threads' batches at once
            _pool = ThreadPoolExecutor(max_workers=8 * MAX_CHECKS, thread_name_prefix="batch")
    futures = [_pool.submit(work, job) for job in jobs]
    wait(futures, timeout)
    late = TimeoutError(f"still running after {timeout:g} s in a batch")
    return [future.exception() if future.done() else late for future in futures]
