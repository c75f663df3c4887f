"""Verdicts by (model, question, change), in NATS KV: the same question about the same change is paid once.

That happens when many monitors watch one page with one question, and when
an analyse message is redelivered after its call but before its finding
was stored.  Entries expire after a week.
"""

from __future__ import annotations

import hashlib
import json

import nats.js.errors
from nats.js.api import KeyValueConfig
from nats.js.kv import KeyValue

from pipeline.broker.assets import key_value
from pipeline.rules import Verdict

TTL = 7 * 86400.0


def cache_key(model: str, question: str, change_text: str) -> str:
    return hashlib.sha256("\0".join((model, " ".join(question.split()), change_text)).encode()).hexdigest()


class VerdictCache:
    def __init__(self, broker: object) -> None:
        self.broker = broker
        self.bucket = f"{broker.prefix}_verdicts"  # type: ignore[attr-defined]
        self._kv: KeyValue | None = None

    async def _open(self) -> KeyValue:
        if self._kv is None:
            js = self.broker.js  # type: ignore[attr-defined]
            storage, replicas = self.broker.storage, self.broker.replicas  # type: ignore[attr-defined]
            self._kv = await key_value(js, KeyValueConfig(self.bucket, ttl=TTL, storage=storage, replicas=replicas))
        return self._kv

    async def _get(self, key: str) -> bytes | None:
        try:
            return (await (await self._open()).get(key)).value
        except nats.js.errors.KeyNotFoundError:
            return None

    async def _put(self, key: str, value: bytes) -> None:
        await (await self._open()).put(key, value)

    def get(self, key: str) -> Verdict | None:
        raw = self.broker.run(self._get(key), timeout=10)  # type: ignore[attr-defined]
        if not raw:
            return None
        data = json.loads(raw)
        return Verdict(data["relevant"], data["severity"], data["summary"], tuple(data["evidence"]))

    def put(self, key: str, verdict: Verdict) -> None:
        data = {
            "relevant": verdict.relevant,
            "severity": verdict.severity,
            "summary": verdict.summary,
            "evidence": list(verdict.evidence),
        }
        self.broker.run(self._put(key, json.dumps(data).encode()), timeout=10)  # type: ignore[attr-defined]
