"""Shared rate limiting: quotas per API key and per domain, decided in one place for all workers.

- :mod:`~pipeline.ratelimit.quota`: the algorithm, pure, with an explicit clock;
- :mod:`~pipeline.ratelimit.store`: where its state lives (memory, or NATS KV);
- :mod:`~pipeline.ratelimit.limiter`: the two joined, for worker threads;
- :mod:`~pipeline.ratelimit.dramatiq_backend`: Dramatiq's own rate limiters on NATS KV.
"""

from pipeline.ratelimit.dramatiq_backend import NatsRateLimiterBackend
from pipeline.ratelimit.limiter import Limiter, RateLimitedError
from pipeline.ratelimit.quota import Decision, Rate, State, TooLargeError
from pipeline.ratelimit.store import KVStore, MemoryStore

__all__ = [
    "Decision",
    "KVStore",
    "Limiter",
    "MemoryStore",
    "NatsRateLimiterBackend",
    "Rate",
    "RateLimitedError",
    "State",
    "TooLargeError",
]
