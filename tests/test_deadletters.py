"""pipeline dlq: list, replay and purge dead letters."""

from __future__ import annotations

import dramatiq
from dramatiq import Worker

from pipeline.broker import JetStreamBroker
from pipeline.deadletters import list_dead, purge, replay
from tests.conftest import wait_for


def test_a_dead_letter_is_listed_with_its_reason_and_replayed_with_fresh_retries(
    broker: JetStreamBroker, worker: Worker
) -> None:
    fixed = []

    @dramatiq.actor(queue_name="flaky", max_retries=1, min_backoff=10, max_backoff=20)
    def flaky(n: int) -> None:
        if not fixed:
            raise ConnectionError("upstream down")
        fixed.append(n)

    flaky.send(7)
    broker.join("flaky", fail_fast=False, timeout=10_000)
    [letter] = list_dead(broker)
    assert (letter.queue, letter.reason) == ("flaky", "ConnectionError: upstream down")
    assert letter.subject == broker.names("flaky").subject

    fixed.append(0)  # the upstream is back
    replay(broker, letter)
    assert wait_for(lambda: fixed == [0, 7], 10)
    assert list_dead(broker) == []


def test_purge_drops_one_queue_or_all(broker: JetStreamBroker, worker: Worker) -> None:
    @dramatiq.actor(queue_name="bad_a", max_retries=0)
    def bad_a() -> None:
        raise ValueError("a")

    @dramatiq.actor(queue_name="bad_b", max_retries=0)
    def bad_b() -> None:
        raise ValueError("b")

    bad_a.send()
    bad_b.send()
    assert wait_for(lambda: len(list_dead(broker)) == 2, 10)
    purge(broker, "bad_a")
    assert [letter.queue for letter in list_dead(broker)] == ["bad_b"]
    purge(broker)
    assert list_dead(broker) == []


def test_reasons_outside_ascii_are_listed_as_text(broker: JetStreamBroker, worker: Worker) -> None:
    @dramatiq.actor(queue_name="unicode", max_retries=0)
    def fails() -> None:
        raise ValueError("fetching https://shop.example/… failed: prix trop élevé")

    fails.send()
    broker.join("unicode", fail_fast=False, timeout=10_000)
    [letter] = list_dead(broker, "unicode")
    assert letter.reason == "ValueError: fetching https://shop.example/... failed: prix trop \\xe9lev\\xe9"


def _dead(broker: JetStreamBroker, queue: str, job: dict, why: Exception) -> None:
    message = dramatiq.Message(queue_name=queue, actor_name=queue, args=(job,), kwargs={}, options={},
                               message_id=f"{job['trace']}-{queue}")  # fmt: skip
    broker.dead_letter_message(message, why)


def _monitor(engine, **fields: object) -> int:
    from sqlmodel import Session

    from pipeline.models import Monitor

    with Session(engine) as session:
        monitor = Monitor(name="shop", url="http://127.0.0.1:9/p", notify=["http://127.0.0.1:9/hook"], **fields)
        session.add(monitor)
        session.commit()
        assert monitor.id is not None
        return monitor.id


def _edit(engine, monitor_id: int, **fields: object) -> None:
    from sqlmodel import Session

    from pipeline.models import Monitor

    with Session(engine) as session:
        monitor = session.get(Monitor, monitor_id)
        assert monitor is not None
        for name, value in fields.items():
            setattr(monitor, name, value)
        session.add(monitor)
        session.commit()


def _next_job(broker: JetStreamBroker, queue: str) -> dramatiq.Message:
    consumer = broker.consume(queue, prefetch=1, timeout=2000)
    try:
        message = next(consumer)
        assert message is not None, f"nothing on {queue}"
        consumer.ack(message)
        return message
    finally:
        consumer.close()


def test_a_check_dead_in_scrape_is_fetched_again_as_its_monitor_is_now(broker: JetStreamBroker, db_engine) -> None:
    """The selector that matched nothing, fixed by the user: the replay fetches the page again with the new one
    (the old body may be gone from the object store, and the page itself fixed), under a new trace."""
    from pipeline.content import ExtractError

    for queue in ("fetch", "scrape"):
        broker.declare_queue(queue)
    monitor_id = _monitor(db_engine, selector=".old", rule="price < 100")
    job = {"source": f"monitor:{monitor_id}", "url": "http://127.0.0.1:9/p", "selector": ".old",
           "rule": "price < 100", "question": None, "notify": ["http://127.0.0.1:9/hook"], "trace": "event-E-7",
           "body": "inline:PHA+", "content_type": "text/html"}  # fmt: skip
    _dead(broker, "scrape", job, ExtractError("selector '.old' matched nothing"))
    _edit(db_engine, monitor_id, selector=".new")

    [letter] = list_dead(broker)
    assert (letter.queue, letter.source) == ("scrape", f"monitor:{monitor_id}")
    assert replay(broker, letter, db_engine) == "fetch"

    again = _next_job(broker, "fetch")
    assert again.actor_name == "fetch" and again.message_id == f"event-E-7-replay{letter.sequence}-fetch"
    assert again.args[0] == {**{k: v for k, v in job.items() if k not in ("body", "content_type")},
                             "selector": ".new", "trace": f"event-E-7-replay{letter.sequence}"}  # fmt: skip
    assert list_dead(broker) == []


def test_a_check_dead_in_analyse_is_judged_again_with_the_rule_as_it_is_now(broker: JetStreamBroker, db_engine) -> None:
    from pipeline.rules import RuleError

    broker.declare_queue("analyse")
    monitor_id = _monitor(db_engine, rule="price <<< 100")
    job = {"source": f"monitor:{monitor_id}", "url": "http://127.0.0.1:9/p", "selector": None,
           "rule": "price <<< 100", "question": None, "notify": [], "trace": "event-E-8-replay3",
           "before_id": None, "after_id": 4}  # fmt: skip
    _dead(broker, "analyse", job, RuleError("cannot read the rule"))
    _edit(db_engine, monitor_id, rule="price < 100", notify=["http://127.0.0.1:9/new-hook"])

    [letter] = list_dead(broker)
    assert replay(broker, letter, db_engine) == "analyse"
    again = _next_job(broker, "analyse").args[0]
    assert (again["rule"], again["notify"], again["after_id"]) == ("price < 100", ["http://127.0.0.1:9/new-hook"], 4)
    assert again["trace"] == f"event-E-8-replay{letter.sequence}"  # not a trace that grows with each replay


def test_a_removed_monitors_dead_letter_is_kept_with_why(broker: JetStreamBroker, db_engine) -> None:
    import pytest

    from pipeline.queries import remove_monitor

    broker.declare_queue("fetch")
    monitor_id = _monitor(db_engine)
    job = {"source": f"monitor:{monitor_id}", "url": "http://127.0.0.1:9/p", "selector": None, "rule": None,
           "question": None, "notify": [], "trace": "event-E-9"}  # fmt: skip
    _dead(broker, "fetch", job, ValueError("HTTP 404"))
    remove_monitor(db_engine, monitor_id)
    [letter] = list_dead(broker)
    with pytest.raises(ValueError, match="was removed"):
        replay(broker, letter, db_engine)
    assert list_dead(broker) == [letter]


def test_an_invalid_events_letter_names_its_monitor_or_url(broker: JetStreamBroker) -> None:
    from pipeline.deadletters import _source

    assert _source(b'{"monitor_id": 3}') == "monitor:3"
    assert _source(b'{"url": "https://user:pw@shop.example/p?token=s3cret"}') == "https://shop.example/p"
    assert _source(b"not json") == "" and _source(b"[1]") == ""
