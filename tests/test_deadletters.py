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
