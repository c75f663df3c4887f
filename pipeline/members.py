"""Several ``pipeline autoscale`` machines serving one pipeline: each runs its share of one desired count.

Every machine reads the same lag and so computes the same desired count per
queue (``pipeline.autoscale.Scaler``); what differs is how much of it is
this machine's.  Each machine keeps an entry in the NATS KV bucket
``<prefix>_autoscalers`` (its queues), written every polling interval and
expiring ``ttl`` seconds after the last write; the live entries, in name
order, split each queue's count the way ``divmod`` does, the remainder going
to the first names.  A machine that dies stops writing: its entry expires
and the others take its share at their next poll.  Between two polls two
machines may briefly disagree on the membership; the total is then off by
at most the departing machine's share, for one interval.
"""

from __future__ import annotations

import json
import os
import re
import socket
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the autoscaler's policy code imports share() alone: no NATS client for it
    from nats.js.kv import KeyValue

    from pipeline.broker import JetStreamBroker

#: How many polling intervals an entry outlives its machine's last write (the bucket's TTL).
MISSED_POLLS = 3


def share(total: int, members: list[str], me: str) -> int:
    """This machine's part of ``total`` replicas among ``members`` (sorted names; ``me`` among them).

    >>> [share(5, ["a", "b"], m) for m in ("a", "b")]
    [3, 2]
    """
    if me not in members:
        return total
    ordered = sorted(members)
    each, extra = divmod(total, len(ordered))
    return each + (1 if ordered.index(me) < extra else 0)


class Membership:
    """This machine's entry among the autoscalers of one pipeline (prefix).

    ``heartbeat()`` writes the entry and returns, per queue, the names of the machines that
    scale it now; ``leave()`` removes it (a clean stop gives its share back at once).
    """

    def __init__(self, broker: JetStreamBroker, queues: Iterable[str], *, ttl: float, name: str | None = None) -> None:
        self.broker = broker
        self.queues = sorted(queues)
        self.ttl = ttl
        raw = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.name = re.sub(r"[^-_=a-zA-Z0-9]", "_", raw)  # what a KV key may hold
        self.bucket = f"{broker.prefix}_autoscalers"
        self._kv: KeyValue | None = None

    def heartbeat(self) -> dict[str, list[str]]:
        return self.broker.run(self._heartbeat(), timeout=10)

    async def _heartbeat(self) -> dict[str, list[str]]:
        import nats.js.errors

        kv = await self._bucket()
        await kv.put(self.name, json.dumps({"queues": self.queues}).encode())
        try:
            names = await kv.keys()
        except nats.js.errors.NoKeysError:
            names = []
        members: dict[str, list[str]] = {queue: [] for queue in self.queues}
        for name in names:
            try:
                entry = await kv.get(name)
            except nats.js.errors.KeyNotFoundError:  # expired or left since the listing
                continue
            for queue in json.loads(entry.value or b"{}").get("queues", []):
                if queue in members:
                    members[queue].append(name)
        for queue in self.queues:  # our own write may not be listed yet
            if self.name not in members[queue]:
                members[queue].append(self.name)
        return {queue: sorted(names) for queue, names in members.items()}

    def leave(self) -> None:
        async def delete() -> None:
            await (await self._bucket()).delete(self.name)

        self.broker.run(delete(), timeout=10)

    async def _bucket(self) -> KeyValue:
        from nats.js.api import KeyValueConfig

        from pipeline.broker.assets import key_value

        if self._kv is None:
            broker = self.broker
            config = KeyValueConfig(
                self.bucket, ttl=self.ttl, history=1, storage=broker.storage, replicas=broker.replicas
            )
            self._kv = await key_value(broker.js, config)
        return self._kv
