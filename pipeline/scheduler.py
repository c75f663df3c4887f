"""The scheduler: due monitors become ``monitor`` events.

Each event is published with ``Nats-Msg-Id: monitor:<id>:<slot>``, the slot
being the monitor's due time, so two schedulers that pick the same monitor
in the same slot produce one event: JetStream's duplicate window, not a
lock, makes running several schedulers safe.  The next due time gets a
little jitter (±10% of the interval) so monitors added together spread out.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from datetime import UTC, datetime, timedelta

from dramatiq.errors import ConnectionClosed
from sqlmodel import Session

from pipeline import queries
from pipeline.broker import JetStreamBroker
from pipeline.ingest import Ingest
from pipeline.monitor_files import MAX_EVERY
from pipeline.outage import Outage
from pipeline.service import BackgroundService
from pipeline.stages import Context

logger = logging.getLogger(__name__)

#: Due monitors read, published and rescheduled together; a pass takes pages until none is due.
PAGE = 5000

#: Seconds a page's events may take to be stored (published again, under the same ids, meanwhile).
PUBLISH_TIMEOUT = 30.0
#: Seconds the acknowledgements of one round of publishes are waited for.
ACK_WAIT = 5.0


def slot_id(monitor_id: int, due: datetime) -> str:
    return f"monitor:{monitor_id}:{int(due.timestamp())}"


def _spread(seconds: float, jitter: float) -> float:
    return seconds * (1 + random.uniform(-jitter, jitter))


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
        """Publish an event for every due monitor, a page at a time; return how many were due.

        A page's events are published together and each must be acknowledged (stored) before the
        page's monitors are rescheduled: a failure leaves them due, and the next pass publishes
        them again under the same slot ids, which JetStream drops if they were stored after all.
        """
        now = now or datetime.now(UTC)
        total = 0
        while not self.stop_event.is_set():
            with Session(self.ctx.engine) as session:
                due = queries.due_slots(session, now, PAGE)
                events = [(slot_id(id_, at), json.dumps({"monitor_id": id_}).encode()) for id_, at, _ in due]
                self.broker.run(self._publish(events), timeout=PUBLISH_TIMEOUT + 10)
                jitter = self.jitter
                # min: a row stored before intervals were held to a year must not overflow the date for all
                queries.reschedule(
                    session, [(id_, now + timedelta(seconds=_spread(min(every, MAX_EVERY), jitter)))
                              for id_, _, every in due]
                )  # fmt: skip
                session.commit()
            total += len(due)
            if len(due) < PAGE:
                break
        return total

    async def _publish(self, events: list[tuple[str, bytes]]) -> None:
        """Publish without waiting for each acknowledgement, then collect them all; publish again what was
        not acknowledged, until every event is stored or ``PUBLISH_TIMEOUT`` passes (``ConnectionClosed``)."""
        js = self.broker.js
        deadline = asyncio.get_running_loop().time() + PUBLISH_TIMEOUT
        while events:
            acks = [await js.publish_async(self.subject, data, headers={"Nats-Msg-Id": id_}) for id_, data in events]
            if acks:
                await asyncio.wait(acks, timeout=ACK_WAIT)
            for ack in acks:
                ack.cancel()  # no answer within ACK_WAIT: not stored, as far as we know
            events = [event for event, ack in zip(events, acks, strict=True) if ack.cancelled() or ack.exception()]
            if events and asyncio.get_running_loop().time() > deadline:
                raise ConnectionClosed(f"{len(events)} scheduled events were not stored within {PUBLISH_TIMEOUT:g} s")
            if events:
                await asyncio.sleep(0.5)

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
