"""The scheduler: due monitors become ``monitor`` events.

Each event is published with ``Nats-Msg-Id: monitor:<id>:<slot>``, the slot
being the monitor's due time, so two schedulers that pick the same monitor
in the same slot produce one event: JetStream's duplicate window, not a
lock, makes running several schedulers safe.  The next due time gets a
little jitter (±10% of the interval) so monitors added together spread out.
"""

from __future__ import annotations

import json
import logging
import random
from datetime import UTC, datetime, timedelta

from sqlmodel import Session

from pipeline import queries
from pipeline.broker import JetStreamBroker
from pipeline.ingest import Ingest
from pipeline.models import Monitor
from pipeline.outage import Outage
from pipeline.service import BackgroundService
from pipeline.stages import Context

logger = logging.getLogger(__name__)

#: How many due monitors one pass takes; the rest wait for the next pass.
BATCH = 500


def slot_id(monitor: Monitor) -> str:
    return f"monitor:{monitor.id}:{int(monitor.next_check_at.timestamp())}"


class Scheduler(BackgroundService):
    def __init__(self, broker: JetStreamBroker, ctx: Context, *, tick: float = 5.0, jitter: float = 0.1) -> None:
        super().__init__()
        self.broker = broker
        self.ctx = ctx
        self.tick = tick
        self.jitter = jitter
        self.subject = f"{broker.prefix}.events.monitor"
        self.outage = Outage("scheduler", logger)

    def run_once(self, now: datetime | None = None) -> int:
        """Publish an event for every due monitor; return how many were due."""
        now = now or datetime.now(UTC)
        with Session(self.ctx.engine) as session:
            due = queries.due_monitors(session, now, BATCH)
            for monitor in due:
                data = json.dumps({"monitor_id": monitor.id}).encode()
                self.broker.run(self.broker.js.publish(self.subject, data, headers={"Nats-Msg-Id": slot_id(monitor)}))
                spread = 1 + random.uniform(-self.jitter, self.jitter)
                monitor.next_check_at = now + timedelta(seconds=monitor.interval_seconds * spread)
                session.add(monitor)
            session.commit()
        return len(due)

    def run(self) -> None:
        declared = False
        while not self.stop_event.is_set():
            try:
                if not declared:
                    Ingest(self.broker, self.ctx).declare()  # the events stream must exist before publishing
                    declared = True
                self.run_once()
                self.outage.ok()
            except Exception as e:  # NATS or the database away: due monitors stay due, the next pass has them
                self.outage.failed(e)
            self.stop_event.wait(self.tick)
