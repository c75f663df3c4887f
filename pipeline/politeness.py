"""Per-domain politeness for fetch, shared by every worker through NATS KV.

At most one request per host per ``interval`` seconds, across all machines:
each host is a quota of one request per interval in the shared limiter
(:mod:`pipeline.ratelimit`).  A check whose host is busy *books* the next
free turn and is put back until then (a server-scheduled message, not a
retry: waiting costs no retries and holds no thread); delivered at its turn,
it fetches without asking again.  So N checks of one host cost about 2N
messages.  Asking for a turn that starts now, and waking every waiting check
at each turn, cost about N²/2 (70 checks of one host took 2,578 messages).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline import metrics
from pipeline.broker import JetStreamBroker
from pipeline.ratelimit import KVStore, Limiter, Rate

#: How far ahead a check may book its host's turn, in seconds.  A check that would wait longer (thousands
#: of checks of one host) is not booked: it asks again when half of this has passed, when half the
#: queue ahead of it has gone.
HORIZON = 600.0
#: A check delivered this late for the turn it booked, as a share of the interval, still takes it;
#: later, its turn has passed and it books another.  Two requests to a host are then at least half an
#: interval apart, as with Scrapy, which spaces them 0.5 to 1.5 times its delay (RANDOMIZE_DOWNLOAD_DELAY).
LATE = 0.5
#: How much sooner than its turn, in seconds, a booked check is delivered: NATS' message schedules fire on a
#: 250 ms tick (measured on nats-server 2.15: schedules 0.2 s apart fired 0 to 0.21 s late), so a check
#: due at its turn would come late for it.  It waits out the rest in its thread (``SLEEP_AT_MOST``).
DELIVERED_SOONER = 0.25
#: A turn this close, in seconds, is waited for in the thread: cheaper than a message put back.
SLEEP_AT_MOST = DELIVERED_SOONER + 0.05


@dataclass(frozen=True)
class Turn:
    """A host's turn for one request: in ``wait`` seconds (0: now).

    ``at``: when the booked turn starts, on the shared store's clock (``Politeness.clock``).
    None: not booked (the host's queue is longer than ``HORIZON``): ask again after ``wait``.
    """

    wait: float
    at: float | None


class Politeness:
    def __init__(self, broker: JetStreamBroker, interval: float) -> None:
        """``interval``: seconds between two requests to one host (``PIPELINE_FETCH_DOMAIN_INTERVAL``); 0: off."""
        self.interval = interval
        self.limiter: Limiter | None = None
        if self.interval > 0:
            self.limiter = Limiter(
                KVStore.from_broker(broker, "ratelimit"), {"requests": Rate(1, interval, margin=1.0)}
            )

    def turn(self, host: str) -> Turn:
        """Book ``host``'s next free turn (at most ``HORIZON`` ahead)."""
        if self.limiter is None:
            return Turn(0.0, None)
        decision = self.limiter.decide(f"host/{host.lower()}", {"requests": 1}, HORIZON)
        if decision.granted and decision.wait <= 0:
            return Turn(0.0, decision.at)
        metrics.RATELIMIT_DENIED.labels("fetch").inc()
        if decision.granted:
            return Turn(decision.wait, decision.at)
        return Turn(max(decision.wait, HORIZON / 2), None)

    def clock(self) -> float:
        """Now, on the clock turns are booked by (the NATS server's, shared by every machine)."""
        assert self.limiter is not None
        return self.limiter.clock()
