"""Bodies between fetch and scrape: small ones in the message, large ones by claim check.

A page of up to ``INLINE_MAX`` bytes (almost every page) rides in the scrape
message itself, base64-encoded: no round trip to store it and none to read it
back.  NATS' default max payload is 1 MiB, so a larger body is stored in a
NATS Object Store under its SHA-256 and only the key travels; identical
bodies are stored once, and objects expire after ``ttl`` (a day by default):
by then every stage has long read them.

Screenshots of rendered pages are kept, not passed on: they go to a bucket of
their own, ``<prefix>_screenshots``, for ``SCREENSHOT_TTL`` (a week), so the key
an alert names can be fetched (``pipeline screenshot KEY``) when someone reads it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib

import nats.js.errors
from nats.js.api import ObjectStoreConfig
from nats.js.object_store import ObjectStore

from pipeline.broker import JetStreamBroker
from pipeline.broker.assets import object_store

#: The largest body carried in the message (base64 makes it a third larger; the rest of the job is small).
INLINE_MAX = 256 * 1024
_INLINE = "base64:"
#: Seconds a screenshot is kept (a week: alerts are read within days, and each check may store one).
SCREENSHOT_TTL = 7 * 86400.0


class BodyStore:
    """Content-addressed blobs in the object store ``<prefix>_<name>``, each kept ``ttl`` seconds."""

    def __init__(self, broker: JetStreamBroker, *, name: str = "bodies", ttl: float = 86400.0) -> None:
        self.broker = broker
        self.bucket = f"{broker.prefix}_{name}"
        self.ttl = ttl
        self._store: ObjectStore | None = None
        self._lock = asyncio.Lock()

    async def _open(self) -> ObjectStore:
        async with self._lock:
            if self._store is None:
                js = self.broker.js
                config = ObjectStoreConfig(ttl=self.ttl, storage=self.broker.storage, replicas=self.broker.replicas)
                self._store = await object_store(js, self.bucket, config)
            return self._store

    async def _put(self, key: str, body: bytes) -> None:
        store = await self._open()
        try:
            await store.get_info(key)
            return  # content-addressed: already there
        except nats.js.errors.ObjectNotFoundError:
            pass
        await store.put(key, body)

    async def _get(self, key: str) -> bytes:
        store = await self._open()
        try:
            result = await store.get(key)
        except nats.js.errors.ObjectNotFoundError:
            raise KeyError(key) from None
        return result.data or b""

    def put(self, body: bytes, *, inline: bool = True) -> str:
        """A reference to ``body`` for a message: ``base64:<body>`` up to ``INLINE_MAX`` bytes, else (or
        with ``inline=False``: what is kept, like a screenshot) ``sha256:<hex>``, the key it is stored under."""
        if inline and len(body) <= INLINE_MAX:
            return _INLINE + base64.b64encode(body).decode()
        key = "sha256:" + hashlib.sha256(body).hexdigest()
        self.broker.run(self._put(key.replace(":", "_"), body), timeout=60)
        return key

    @classmethod
    def screenshots(cls, broker: JetStreamBroker) -> BodyStore:
        """Where rendered pages' screenshots are kept (``SCREENSHOT_TTL``)."""
        return cls(broker, name="screenshots", ttl=SCREENSHOT_TTL)

    def get(self, key: str) -> bytes:
        """The body a reference from :meth:`put` stands for.  Raises ``KeyError`` if it is not there (expired,
        or never stored), ``ValueError`` if the stored copy is corrupt."""
        if key.startswith(_INLINE):
            return base64.b64decode(key[len(_INLINE) :], validate=True)
        body = self.broker.run(self._get(key.replace(":", "_")), timeout=60)
        if "sha256:" + hashlib.sha256(body).hexdigest() != key:
            raise ValueError(f"body {key} is corrupt")
        return body
