"""Claim checks: large bodies live in a NATS Object Store, messages carry their key.

NATS' default max payload is 1 MiB and a Dramatiq message should stay small,
so fetch stores each body here under its SHA-256 and sends only the key on;
scrape reads it back.  Identical bodies are stored once.  Objects expire
after ``ttl`` (a day by default): by then every stage has long read them.
"""

from __future__ import annotations

import asyncio
import hashlib

import nats.js.errors
from nats.js.api import ObjectStoreConfig
from nats.js.object_store import ObjectStore

from pipeline.broker import JetStreamBroker
from pipeline.broker.assets import object_store


class BodyStore:
    def __init__(self, broker: JetStreamBroker, *, ttl: float = 86400.0) -> None:
        self.broker = broker
        self.bucket = f"{broker.prefix}_bodies"
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
        result = await store.get(key)
        return result.data or b""

    def put(self, body: bytes) -> str:
        """Store ``body``; return its key (``sha256:<hex>``)."""
        key = "sha256:" + hashlib.sha256(body).hexdigest()
        self.broker.run(self._put(key.replace(":", "_"), body), timeout=60)
        return key

    def get(self, key: str) -> bytes:
        body = self.broker.run(self._get(key.replace(":", "_")), timeout=60)
        if "sha256:" + hashlib.sha256(body).hexdigest() != key:
            raise ValueError(f"body {key} is corrupt")
        return body
