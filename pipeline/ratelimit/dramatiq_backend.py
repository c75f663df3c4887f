"""Dramatiq's rate limiters across machines with NATS alone.

Dramatiq ships rate limiter backends for Redis and Memcached; this one keeps
the same counters in a NATS KV bucket, so ``ConcurrentRateLimiter``,
``BucketRateLimiter``, ``WindowRateLimiter`` and ``Barrier`` work for every
worker that reaches the NATS server::

    from dramatiq.rate_limits import ConcurrentRateLimiter
    from pipeline.ratelimit import NatsRateLimiterBackend

    backend = NatsRateLimiterBackend(url="nats://127.0.0.1:4222")
    mutex = ConcurrentRateLimiter(backend, "reports-mutex", limit=1)

Every operation is one compare-and-set on one KV entry.  An entry holds its
value and its expiry (on the NATS server's clock, millisecond TTLs as
Dramatiq gives them), and NATS drops it a second after that by
per-message TTL.  A ``WindowRateLimiter``'s per-second counters
(``name@<second>``) share one entry, which is what makes ``incr_and_sum``
atomic; it keeps up to 10,000 of them, so windows up to a few hours.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

import nats.errors
from dramatiq.rate_limits import RateLimiterBackend
from nats.js import JetStreamContext

from pipeline.ratelimit.store import KVStore, kv_key

DEFAULT_BUCKET = "dramatiq_rate_limits"


#: Counters one window entry may hold (a second each): enough for windows of hours, small enough for one message.
MAX_WINDOW_KEYS = 10_000


def _decode(raw: bytes | None, now: float) -> dict[str, list[float]]:
    """``{sub_key: [value, expires_at]}`` with the expired ones left out."""
    if raw is None:
        return {}
    return {key: entry for key, entry in json.loads(raw).items() if entry[1] > now}


def _encode(entries: dict[str, list[float]]) -> bytes:
    return json.dumps(entries, separators=(",", ":")).encode()


class NatsRateLimiterBackend(RateLimiterBackend):
    """A Dramatiq ``RateLimiterBackend`` on a NATS KV bucket.

    Parameters:
      url: the NATS server(s); default ``$PIPELINE_NATS_URL``, else the
        embedded server under ``.pipeline/``.
      bucket: the KV bucket holding the counters.
      store: an existing :class:`~pipeline.ratelimit.KVStore` to use instead
        of a connection of the backend's own.
      **options: passed to ``nats.connect`` (credentials, TLS, ...).
    """

    def __init__(
        self, url: str | None = None, *, bucket: str = DEFAULT_BUCKET, store: KVStore | None = None, **options: Any
    ) -> None:
        if store is None:
            if url is None:
                from pipeline.nats_server import embedded_url
                from pipeline.settings import current

                settings = current()
                url = settings.nats.url or embedded_url(settings.home)
            store = KVStore.connect(url, bucket, **options)
        self.store = store

    def close(self) -> None:
        self.store.close()

    def _change(self, key: str, ttl: int, step: Callable[[float | None], float | None]) -> bool:
        """Apply ``step`` to the key's value (None: absent); it returns the new value, or None to refuse."""

        def change(raw: bytes | None) -> tuple[bytes | None, float, bool]:
            now = self.store.clock()
            entries = _decode(raw, now)
            current = entries.get("")
            new = step(None if current is None else current[0])
            if new is None:
                return None, 0.0, False
            entries = {"": [new, now + ttl / 1000]}
            return _encode(entries), _lifetime(entries, now), True

        return self.store.update(f"c/{key}", change)

    @staticmethod
    def _window(key: str) -> tuple[str, str]:
        """``name@<second>`` -> (``name``, ``<second>``): a window's counters live together in one entry."""
        name, at, second = key.rpartition("@")
        if not at or not second.isdigit():
            raise ValueError(f"incr_and_sum needs keys of the form <name>@<second>, got {key!r}")
        return name, second

    def add(self, key: str, value: int, ttl: int) -> bool:
        return self._change(key, ttl, lambda current: value if current is None else None)

    def incr(self, key: str, amount: int, maximum: int, ttl: int) -> bool:
        def step(current: float | None) -> float | None:
            new = (current or 0) + amount
            return new if new <= maximum else None

        return self._change(key, ttl, step)

    def decr(self, key: str, amount: int, minimum: int, ttl: int) -> bool:
        def step(current: float | None) -> float | None:
            new = (current or 0) - amount
            return new if new >= minimum else None

        return self._change(key, ttl, step)

    def incr_and_sum(self, key: str, keys: Callable[[], list[str]], amount: int, maximum: int, ttl: int) -> bool:
        group, sub = self._window(key)

        def change(raw: bytes | None) -> tuple[bytes | None, float, bool]:
            now = self.store.clock()
            entries = _decode(raw, now)
            names = [self._window(k) for k in keys()]  # asked again on every attempt, as the clock moves
            if any(name != group for name, _ in names):
                raise ValueError(f"incr_and_sum keys must share the window {group!r}, got {keys()}")
            subs = {second for _, second in names} | {sub}
            refused = sum(entries[k][0] for k in subs if k in entries) + amount > maximum
            if refused and sub in entries:
                return None, 0.0, False
            value = entries.get(sub, [0, 0])[0] + (0 if refused else amount)  # as Dramatiq's: the key exists after
            entries[sub] = [value, now + ttl / 1000]
            if len(entries) > MAX_WINDOW_KEYS:
                raise ValueError(f"window {group!r} holds more than {MAX_WINDOW_KEYS} counters; use a shorter window")
            return _encode(entries), _lifetime(entries, now), not refused

        return self.store.update(f"w/{group}", change)

    def wait_notify(self, key: str, ttl: int) -> None:
        self._change(key, ttl, lambda current: 1)

    def wait(self, key: str, timeout: int | None) -> bool:
        """Block until ``wait_notify(key)`` (before or after this call), or ``timeout`` ms (None: for ever)."""
        deadline = math.inf if timeout is None else time.monotonic() + timeout / 1000

        async def watch(js: JetStreamContext) -> bool:
            kv = await js.key_value(self.store.bucket)
            watcher = await kv.watch(kv_key(f"c/{key}"))
            try:
                while (left := deadline - time.monotonic()) > 0:
                    try:
                        entry = await watcher.updates(timeout=min(left, 60.0))
                    except (TimeoutError, nats.errors.TimeoutError):
                        continue
                    if entry is not None and entry.value and _decode(entry.value, self.store.clock()):
                        return True
                return False
            finally:
                await watcher.stop()

        return self.store.call(watch)


def _lifetime(entries: dict[str, list[float]], now: float) -> float:
    return max(entry[1] for entry in entries.values()) - now + 1.0
