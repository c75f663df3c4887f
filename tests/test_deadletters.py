"""pipeline dlq: list, replay and purge dead letters."""

from __future__ import annotations

import json

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


def _next_job(broker: JetStreamBroker, queue: str) -> dramatiq.Message:
    consumer = broker.consume(queue, prefetch=1, timeout=2000)
    try:
        message = next(consumer)
        assert message is not None, f"nothing on {queue}"
        consumer.ack(message)
        return message
    finally:
        consumer.close()


def test_a_monitors_check_dead_in_scrape_is_checked_again_as_a_monitor_event(broker: JetStreamBroker) -> None:
    """The ingest, with the pipeline's own database, then makes its job as the monitor is now (its selector
    fixed since, say); this command reads no database, which may not be the pipeline's."""
    from pipeline.content import ExtractError
    from pipeline.names import events_stream

    broker.declare_queue("scrape")
    stream = events_stream(broker.prefix)
    broker.run(broker.js.add_stream(name=stream, subjects=[f"{broker.prefix}.events.>"]))
    job = {"source": "monitor:7", "url": "http://127.0.0.1:9/p", "selector": ".old", "rule": None,
           "question": None, "notify": [], "trace": "event-E-7", "body": "inline:PHA+",
           "content_type": "text/html"}  # fmt: skip
    _dead(broker, "scrape", job, ExtractError("selector '.old' matched nothing"))

    [letter] = list_dead(broker)
    assert (letter.queue, letter.source) == ("scrape", "monitor:7")
    assert replay(broker, letter) == "events"
    event = broker.run(broker.js.get_msg(stream, seq=1))
    assert (event.subject, json.loads(event.data)) == (f"{broker.prefix}.events.monitor", {"monitor_id": 7})
    assert list_dead(broker) == []


def test_a_check_dead_in_scrape_is_fetched_again_under_a_new_trace(broker: JetStreamBroker) -> None:
    """Its body may be gone from the object store, and the page fixed; the new trace keeps what it sends on
    from being dropped as a duplicate of what the failed run sent."""
    from pipeline.content import ExtractError

    for queue in ("fetch", "scrape"):
        broker.declare_queue(queue)
    job = {"source": "http://127.0.0.1:9/p#0123456789abcdef", "url": "http://127.0.0.1:9/p", "selector": ".p",
           "rule": None, "question": None, "notify": [], "trace": "event-E-8", "body": "inline:PHA+",
           "content_type": "text/html", "read_at": 1.0}  # fmt: skip
    _dead(broker, "scrape", job, ExtractError("selector '.p' matched nothing"))

    [letter] = list_dead(broker)
    assert replay(broker, letter) == "fetch"
    again = _next_job(broker, "fetch")
    trace = f"event-E-8-replay{letter.sequence}"
    assert again.actor_name == "fetch" and again.message_id == f"{trace}-fetch"
    assert again.args[0] == {key: job[key] for key in ("source", "url", "selector", "rule", "question", "notify")} | {
        "trace": trace
    }


def test_checks_dead_in_analyse_or_alert_are_judged_again_as_their_monitors_are_now(broker: JetStreamBroker) -> None:
    from pipeline.rules import RuleError
    from pipeline.stages import DeliveryError

    broker.declare_queue("analyse")
    broker.declare_queue("alert")
    change = {"source": "monitor:3", "url": "http://127.0.0.1:9/p", "selector": None, "rule": "price <<< 100",
              "question": None, "notify": ["http://127.0.0.1:9/hook"], "before_id": None, "after_id": 4}  # fmt: skip
    _dead(broker, "analyse", {**change, "trace": "event-E-9-replay3"}, RuleError("cannot read the rule"))
    alert = {**change, "trace": "event-E-10", "finding_id": 5, "part": "abc", "finding": {"summary": "x"}}
    _dead(broker, "alert", alert, DeliveryError("HTTP 400", transient=False))

    for letter in list_dead(broker):
        assert replay(broker, letter) == "analyse"
    judged = [_next_job(broker, "analyse").args[0] for _ in range(2)]
    assert [job["trace"] for job in judged] == ["event-E-9-replay1", "event-E-10-replay2"]  # not growing
    assert all(job.pop("trace") and job == {**change, "replayed": True} for job in judged)


def test_a_dead_letter_replayed_twice_at_once_is_sent_once(broker: JetStreamBroker) -> None:
    broker.declare_queue("fetch")
    job = {"source": "s", "url": "http://127.0.0.1:9/p", "selector": None, "rule": None, "question": None,
           "notify": [], "trace": "t"}  # fmt: skip
    _dead(broker, "fetch", job, ValueError("HTTP 404"))
    [letter] = list_dead(broker)
    replay(broker, letter)
    replay(broker, letter)  # another shell's replay, listed before the first removed it
    assert broker.lag({"fetch"}) == {"fetch": 1}
