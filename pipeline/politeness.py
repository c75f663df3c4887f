"""Per-domain politeness for fetch, shared by every worker through NATS KV.

At most one request per host per ``interval`` seconds, across all machines:
each host is a quota of one request per interval in the shared limiter
(:mod:`pipeline.ratelimit`).  A fetch asks for a turn that starts *now*;
if the host's turn is taken, the fetch stage re-sends itself with the wait
it was told (a server-scheduled message, not a retry, so waiting costs no
retries and holds no thread).
"""

from __future__ import annotations

from pipeline import metrics
from pipeline.broker import JetStreamBroker
from pipeline.ratelimit import KVStore, Limiter, Rate


class Politeness:
    def __init__(self, broker: JetStreamBroker, interval: float) -> None:
        """``interval``: seconds between two requests to one host (``PIPELINE_FETCH_DOMAIN_INTERVAL``); 0: off."""
        self.interval = interval
        self.limiter: Limiter | None = None
        if self.interval > 0:
            rate = Rate(1, self.interval, margin=1.0)
            self.limiter = Limiter(KVStore.from_broker(broker, "ratelimit"), {"requests": rate})
            # Only a turn that starts now: a queue as long as the whole interval is already too long.
            self._max_wait = -rate.tolerance

    def wait_for(self, host: str) -> float:
        """Seconds to wait before fetching from ``host`` (0: go now, the turn is ours)."""
        if self.limiter is None:
            return 0.0
        decision = self.limiter.decide(f"host/{host.lower()}", {"requests": 1}, self._max_wait)
        if decision.granted:  # only a turn that starts now is taken: no wait to measure
            return 0.0
        metrics.RATELIMIT_DENIED.labels("fetch").inc()
        return max(decision.wait, 0.01)
