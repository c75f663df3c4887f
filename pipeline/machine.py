"""What one machine can usefully run: a budget of worker processes, and fitting the stages' counts into it.

On a cluster every replica gets a node's share of CPU and memory; on one
machine the KEDA policy's counts (up to 20 fetch replicas, 10 scrape
replicas of 2 processes...) would start far more Python processes than it
has cores, each costing a start (imports) and about 100 MB, and would slow
every stage down rather than up.  So ``pipeline up`` and ``pipeline
autoscale`` hold the total of worker processes to a budget from the
machine's cores and memory, and when the policy wants more, every stage
gets the same share of what it wants (the policy's proportions between
stages), with at least one replica for each stage that has work.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

#: Worker processes per core: stages mostly wait on the network, the database and NATS, so a little
#: more than one per core keeps the cores busy; more only adds starts and switching.
PROCESSES_PER_CORE = 2
#: What one worker process takes (resident memory, after its stage's imports).
PROCESS_MEMORY = 150 * 1024 * 1024


def process_budget(cores: int | None = None, memory: int | None = None) -> int:
    """Worker processes this machine runs at most: ``PROCESSES_PER_CORE`` per core, fewer if memory
    (bytes available, default ``MemAvailable``) would not hold them; at least one per stage of four."""
    cores = cores or os.cpu_count() or 1
    memory = _available_memory() if memory is None else memory
    by_memory = memory // PROCESS_MEMORY if memory else cores * PROCESSES_PER_CORE
    return max(4, min(cores * PROCESSES_PER_CORE, by_memory))


def fit(wanted: Mapping[str, int], processes: Mapping[str, int], budget: int) -> dict[str, int]:
    """Replicas per queue whose processes (replicas x ``processes[queue]``) fit ``budget``.

    Within budget, ``wanted`` as it is.  Over it, a queue that wants any gets one replica first (a stage
    with work is never starved, even if the budget is exceeded to keep that promise); the rest of the
    budget goes a replica at a time to the queue furthest below what it wants, in proportion (water
    filling), so each gets about the same fraction of its count.
    """
    if sum(wanted[q] * processes[q] for q in wanted) <= budget:
        return dict(wanted)
    sizes = {q: (1 if n else 0) for q, n in wanted.items()}
    left = budget - sum(sizes[q] * processes[q] for q in sizes)
    while True:
        room = [q for q in sizes if sizes[q] < wanted[q] and processes[q] <= left]
        if not room:
            return sizes
        neediest = min(room, key=lambda q: (sizes[q] / wanted[q], q))
        sizes[neediest] += 1
        left -= processes[neediest]


def _available_memory() -> int:
    """``MemAvailable`` from ``/proc/meminfo`` in bytes; 0 where it cannot be read."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0
