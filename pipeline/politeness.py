"""Per-domain politeness for fetch, shared by every worker through NATS KV.

At most one request per host per ``interval`` seconds, across all machines:
a fetch first *creates* the host's key in a KV bucket whose entries expire
after ``interval``.  Creation succeeds for one caller only; the others are
told how long to wait, and the fetch stage re-sends itself with that delay
(a server-scheduled message, not a retry, so waiting costs no retries).
Issue 5's rate limiter will grow this into full per-domain quotas.
"""

from __future__ import annotations

import asyncio
import os
import re
import time

import nats.js.errors
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from pipeline.broker import JetStreamBroker

_UNSAFE = re.compile(r"[^-_=a-zA-Z0-9.]")


def default_interval() -> float:
    return float(os.environ.get("PIPELINE_FETCH_DOMAIN_INTERVAL", "1.0"))


class Politeness:
    def __init__(self, broker: JetStreamBroker, interval: float | None = None) -> None:
        self.broker = broker
        self.interval = default_interval() if interval is None else interval
        self.bucket = f"{broker.prefix}_politeness"
        self._kv: KeyValue | None = None
        self._lock = asyncio.Lock()

    async def _open(self) -> KeyValue:
        async with self._lock:
            if self._kv is None:
                js = self.broker.js
                # Create, or update the TTL when the configured interval changed.
                config = KeyValueConfig(bucket=self.bucket, ttl=self.interval, storage=StorageType.MEMORY)
                try:
                    self._kv = await js.create_key_value(config)
                except nats.js.errors.BadRequestError:
                    await js.update_stream(name=f"KV_{self.bucket}", max_age=self.interval)
                    self._kv = await js.key_value(self.bucket)
            return self._kv

    async def _claim(self, host: str) -> float:
        kv = await self._open()
        key = _UNSAFE.sub("_", host.lower()) or "_"
        try:
            await kv.create(key, repr(time.time()).encode())  # when the slot was taken
            return 0.0
        except nats.js.errors.KeyWrongLastSequenceError:
            pass
        try:
            entry = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return 0.05  # it just expired: try again almost at once
        try:
            taken = float(entry.value or b"")
        except ValueError:
            taken = time.time()
        return min(self.interval, max(0.05, self.interval - (time.time() - taken)))

    def wait_for(self, host: str) -> float:
        """Seconds to wait before fetching from ``host`` (0: go now, the slot is ours)."""
        if self.interval <= 0:
            return 0.0
        return self.broker.run(self._claim(host), timeout=10)
