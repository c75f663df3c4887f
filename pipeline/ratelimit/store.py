"""Where limiter state lives: one process's memory, or a NATS KV bucket every worker shares.

Both offer one operation, ``update(key, change)``: read the key's value,
let ``change`` compute the new value, its lifetime and a result, write it back
atomically, return the result.  In NATS that is compare-and-set on the
key's revision (``Nats-Expected-Last-Subject-Sequence``); a writer that
lost the race reads again and re-decides, so concurrent workers on any
number of machines behave as if they took turns.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType

from pipeline.broker.assets import key_value
from pipeline.broker.loop import EventLoopThread

R = TypeVar("R")
#: Gets the current value (None: absent or expired); returns the value to store (None: leave as is),
#: how many seconds it matters for, and a result.
Change = Callable[[bytes | None], tuple[bytes | None, float, R]]

_UNSAFE = re.compile(r"[^-_/a-zA-Z0-9]")


def kv_key(key: str) -> str:
    """Any string as a KV key, one to one: characters other than ``-_/`` and ASCII alphanumerics become ``=XX``."""
    escaped = _UNSAFE.sub(lambda m: "".join(f"={b:02X}" for b in m.group().encode()), key)
    return "k." + (escaped or "=")  # a lone "=" is no escape of anything


class Store(Protocol):
    def update(self, key: str, change: Change[R]) -> R: ...

    def clock(self) -> float:
        """Now, in seconds since the epoch, on the clock every user of the store shares."""
        ...


class MemoryStore:
    """One process's state, under a lock: the reference the shared store must match."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._values: dict[str, tuple[bytes, float]] = {}

    def clock(self) -> float:
        return self._clock()

    def update(self, key: str, change: Change[R]) -> R:
        with self._lock:
            value, expires = self._values.get(key, (None, 0.0))
            current = value if expires > self._clock() else None
            new, ttl, result = change(current)
            if new is not None:
                self._values[key] = (new, self._clock() + ttl)
            return result


class ConflictError(RuntimeError):
    """Compare-and-set kept losing: far more writers on one key than it can serve."""


class KVStore:
    """Compare-and-set on a NATS KV bucket, for callers on plain threads.

    Entries expire by per-message TTL (nats-server 2.11+), so keys that are
    never written again (a past window, an idle API key) leave by themselves.

    Its clock is the NATS server's: every minute the store writes a
    ``clock`` entry and reads back the time the server stamped on it, so
    workers on machines whose clocks disagree still share one timeline
    (to within half a round trip).
    """

    MAX_ATTEMPTS = 200
    CLOCK_CHECK_EVERY = 60.0

    def __init__(
        self,
        bucket: str,
        js: Callable[[], JetStreamContext],
        run: Callable[[Coroutine[Any, Any, Any]], Any],
        *,
        replicas: int = 1,
        storage: StorageType = StorageType.FILE,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.bucket = bucket
        self._on_close = on_close  # a connection of the store's own is closed with it
        self._js = js
        self._run = run
        self._config = KeyValueConfig(bucket=bucket, history=1, replicas=replicas, storage=storage, direct=True)
        self._opened: JetStreamContext | None = None
        # The last value and revision seen per key: a worker that was the last to write a key
        # (the common case) decides without reading it first; a stale guess costs one lost CAS.
        self._seen: dict[str, tuple[bytes | None, int]] = {}
        self.conflicts = 0  # lost compare-and-sets, for benchmarks
        self._local_time = time.time  # this machine's clock
        self._offset = 0.0  # the server's clock minus ours
        self._clock_checked = -math.inf

    @classmethod
    def from_broker(cls, broker: Any, name: str) -> KVStore:
        """A bucket ``<prefix>_<name>`` on the broker's own connection."""
        return cls(
            f"{broker.prefix}_{name}", lambda: broker.js, broker.run, replicas=broker.replicas, storage=broker.storage
        )

    @classmethod
    def connect(cls, url: str, bucket: str, **options: Any) -> KVStore:
        """A bucket on a connection of its own (``options`` go to ``nats.connect``)."""
        loop = EventLoopThread(name=f"kv-{bucket}")
        nc = loop.run(nats.connect(url, **{"max_reconnect_attempts": -1, **options}), timeout=30)

        def close() -> None:
            loop.run(nc.close(), timeout=10)
            loop.stop()

        return cls(bucket, nc.jetstream, loop.run, on_close=close)

    def close(self) -> None:
        if self._on_close is not None:
            self._on_close()

    def update(self, key: str, change: Change[R]) -> R:
        return self._run(self._update(kv_key(key), change))

    def clock(self) -> float:
        return self._local_time() + self._offset

    async def _check_clock(self, js: JetStreamContext) -> None:
        if time.monotonic() - self._clock_checked < self.CLOCK_CHECK_EVERY:
            return
        self._clock_checked = time.monotonic()
        subject = f"$KV.{self.bucket}.clock"
        sent = self._local_time()
        await js.publish(subject, b"", msg_ttl=int(self.CLOCK_CHECK_EVERY * 2))
        acked = self._local_time()
        stamped = await js.get_msg(f"KV_{self.bucket}", subject=subject, direct=True)
        if stamped.time is not None:
            self._offset = stamped.time.timestamp() - (sent + acked) / 2

    def call(self, make: Callable[[JetStreamContext], Awaitable[R]]) -> R:
        """Run ``make(js)`` on the store's connection (for watches and one-off reads)."""

        async def call() -> R:
            js = await self._open()
            await self._check_clock(js)
            return await make(js)

        return self._run(call())

    async def _open(self) -> JetStreamContext:
        js = self._js()
        if self._opened is not js:  # first use, or a new connection after a broker restart
            await key_value(js, self._config)
            self._opened = js
        return js

    async def _update(self, key: str, change: Change[R]) -> R:
        js = await self._open()
        await self._check_clock(js)
        subject = f"$KV.{self.bucket}.{key}"
        seen = self._seen.pop(key, None)
        for _ in range(self.MAX_ATTEMPTS):
            current, revision = seen or await self._read(js, subject)
            new, ttl, result = change(current)
            if new is None:
                if seen is None:
                    self._seen[key] = (current, revision)
                    return result
                seen = None  # a refusal must rest on the current value, not a guess: read and decide again
                continue
            headers = {"Nats-Expected-Last-Subject-Sequence": str(revision)}
            try:
                ack = await js.publish(subject, new, headers=headers, msg_ttl=max(1, math.ceil(ttl)))
            except nats.js.errors.APIError as e:
                if e.err_code not in (10071, 10164):  # wrong last sequence: someone wrote first
                    raise
                self.conflicts += 1
                seen = None
                continue
            self._seen[key] = (new, ack.seq)
            if len(self._seen) > 10_000:  # many hosts: forget the oldest guesses
                del self._seen[next(iter(self._seen))]
            return result
        raise ConflictError(f"{self.MAX_ATTEMPTS} compare-and-set attempts on {key!r} lost")

    async def _read(self, js: JetStreamContext, subject: str) -> tuple[bytes | None, int]:
        try:
            msg = await js.get_msg(f"KV_{self.bucket}", subject=subject, direct=True)
        except nats.js.errors.NotFoundError:
            return None, 0
        deleted = msg.headers and (msg.headers.get("KV-Operation") or msg.headers.get("Nats-Marker-Reason"))
        return (None if deleted else msg.data), msg.seq or 0
