"""Batch actors' machinery: several checks in one message, each ending as if it had come alone.

A batch runs its checks at once on this process's batch threads (``pipeline.batching.each``): their waits overlap
and their writes share commits (``pipeline.groupcommit``).  What they hand the next stage is
collected and sent as one message per ``pipeline.batching.MAX_CHECKS`` (``Onward``).  A check that
fails goes on alone as its stage's own message (``actors.recovery.hand_over``), so its retries, its
backoff and its dead letter are those of any check; the batch itself raises only when nothing of it
could be done (the database or NATS away), and is then retried whole: every stage is idempotent.
"""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any

import dramatiq

from actors.recovery import send
from pipeline.batching import groups
from pipeline.jobs import message_id


class Onward:
    """What a batch hands the next stage: collected from its threads, then sent by ``flush``, one job as
    ``single``'s message, several as ``batch``'s (one per ``MAX_CHECKS``, under NATS' payload)."""

    def __init__(self, single: dramatiq.Actor, batch: dramatiq.Actor) -> None:
        self.single = single
        self.batch = batch
        self._jobs: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def send(self, job: Any) -> None:
        with self._lock:
            self._jobs.append(job)

    def flush(self) -> None:
        """Send what was collected.  Sorted by trace, so a redelivered batch that hands on the same jobs sends
        the same messages, which JetStream drops as duplicates."""
        with self._lock:
            jobs, self._jobs = sorted(self._jobs, key=lambda j: (j.get("trace", ""), j.get("part", ""))), []
        for group in groups(jobs, lambda job: len(json.dumps(job))):
            if len(group) == 1:
                send(self.single, group[0], message_id(self.single.actor_name, group[0]))
            else:
                ids = "\n".join(message_id(self.single.actor_name, job) for job in group)
                digest = hashlib.sha256(ids.encode()).hexdigest()[:24]
                send(self.batch, group, f"{self.batch.actor_name}-{digest}")
