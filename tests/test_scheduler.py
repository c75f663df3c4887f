"""The scheduler: due monitors become events, once per slot however many schedulers run."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import Session, select

from pipeline import scheduler
from pipeline.bodies import BodyStore
from pipeline.broker import JetStreamBroker
from pipeline.db import make_engine, migrate
from pipeline.fetcher import Fetcher
from pipeline.ingest import Ingest
from pipeline.models import Monitor
from pipeline.names import events_stream
from pipeline.scheduler import Scheduler
from pipeline.stages import Context


def test_two_schedulers_publish_each_due_monitor_once(
    broker: JetStreamBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scheduler, "PAGE", 7)  # a pass takes every due monitor, page after page
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(engine)
    ctx = Context(engine, BodyStore(broker), Fetcher(), "whsec_" + "A" * 32)
    now = datetime.now(UTC)
    with Session(engine) as session:
        for n in range(20):
            session.add(Monitor(name=f"m{n}", url=f"https://example.com/{n}", interval_seconds=600,
                                next_check_at=now - timedelta(seconds=n)))  # fmt: skip
        session.add(Monitor(name="later", url="https://example.com/later", next_check_at=now + timedelta(hours=1)))
        session.add(Monitor(name="paused", url="https://example.com/paused", paused=True, next_check_at=now))
        session.commit()
    Ingest(broker, ctx).declare()

    first, second = Scheduler(broker, ctx), Scheduler(broker, ctx)
    threads = [threading.Thread(target=s.run_once, args=(now,)) for s in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    info = broker.run(broker.js.stream_info(events_stream(broker.prefix)))
    assert info.state.messages == 20  # not 40: the slot id made the second publish a duplicate
    with Session(engine) as session:
        rescheduled = session.exec(select(Monitor).where(Monitor.name.startswith("m"))).all()  # type: ignore[attr-defined]
    assert all(now + timedelta(seconds=540) <= m.next_check_at <= now + timedelta(seconds=660) for m in rescheduled)
    assert first.run_once(now) == 0  # nothing due any more
    ctx.fetcher.close()


def test_a_monitor_with_an_interval_past_a_year_holds_up_no_other(broker: JetStreamBroker, tmp_path: Path) -> None:
    from pipeline.monitor_files import MAX_EVERY

    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(engine)
    ctx = Context(engine, BodyStore(broker), Fetcher(), "whsec_" + "A" * 32)
    now = datetime.now(UTC)
    with Session(engine) as session:  # stored before intervals were held to a year: 10**15 s overflowed the date
        session.add(Monitor(name="forever", url="https://example.com/f", interval_seconds=10**15, next_check_at=now))
        session.add(Monitor(name="often", url="https://example.com/o", interval_seconds=60, next_check_at=now))
        session.commit()
    Ingest(broker, ctx).declare()
    assert Scheduler(broker, ctx).run_once(now) == 2
    with Session(engine) as session:
        nexts = {m.name: m.next_check_at for m in session.exec(select(Monitor)).all()}
    assert nexts["often"] <= now + timedelta(seconds=66)
    assert now + timedelta(seconds=MAX_EVERY * 0.89) <= nexts["forever"] <= now + timedelta(seconds=MAX_EVERY * 1.11)
    ctx.fetcher.close()
