"""The broker contract against a real nats-server, with an in-process Dramatiq worker."""

from __future__ import annotations

import itertools
import threading
import time

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.errors import ConnectionClosed, QueueJoinTimeout, QueueNotFound

from pipeline.broker import BatchPublishError, JetStreamBroker, QueueNames
from tests.conftest import wait_for


def test_sent_messages_are_all_processed_once(broker: JetStreamBroker, worker: Worker) -> None:
    seen: list[int] = []
    lock = threading.Lock()

    @dramatiq.actor
    def collect(n: int) -> None:
        with lock:
            seen.append(n)

    for n in range(200):
        collect.send(n)
    broker.join(collect.queue_name, timeout=20_000)

    assert sorted(seen) == list(range(200))


def test_send_returns_after_the_message_is_stored(broker: JetStreamBroker) -> None:
    @dramatiq.actor(queue_name="stored")
    def nothing() -> None: ...

    for _ in range(5):
        nothing.send()

    assert broker.lag() == {"stored": 5}


def test_names_are_the_documented_contract(broker: JetStreamBroker) -> None:
    names = QueueNames(broker.prefix, "fetch")
    assert names.stream == f"{broker.prefix}_fetch"
    assert names.subject == f"{broker.prefix}.q.fetch"
    assert names.consumer == "workers"
    assert names.dead_subject == f"{broker.prefix}.dead.fetch"

    @dramatiq.actor(queue_name="fetch")
    def fetch() -> None: ...

    fetch.send()
    info = broker.run(broker.js.consumer_info(names.stream, names.consumer))
    assert info.num_pending == 1
    assert info.config.filter_subject == names.subject


def test_queue_names_that_nats_cannot_carry_are_refused(broker: JetStreamBroker) -> None:
    with pytest.raises(ValueError, match="invalid queue name"):
        broker.declare_queue("has space")
    with pytest.raises(ValueError, match="invalid name prefix"):
        JetStreamBroker("nats://127.0.0.1:1", prefix="a.b")


def test_consumer_never_holds_more_than_prefetch(broker: JetStreamBroker) -> None:
    broker.declare_queue("prefetch")
    for n in range(10):
        broker.enqueue(dramatiq.Message(queue_name="prefetch", actor_name="x", args=(n,), kwargs={}, options={}))

    consumer = broker.consume("prefetch", prefetch=3, timeout=200)
    held = [next(consumer) for _ in range(3)]
    assert all(m is not None for m in held)
    assert next(consumer) is None  # no room: waits for the timeout, fetches nothing

    info = broker.run(broker.js.consumer_info(f"{broker.prefix}_prefetch", "workers"))
    assert (info.num_ack_pending, info.num_pending) == (3, 7)
    assert broker.lag() == {"prefetch": 10}

    consumer.ack(held[0])
    assert next(consumer) is not None
    consumer.close()


def test_closing_a_consumer_returns_its_messages_at_once(make_broker) -> None:
    broker = make_broker(ack_wait=60)
    broker.declare_queue("handback")
    for n in range(4):
        broker.enqueue(dramatiq.Message(queue_name="handback", actor_name="x", args=(n,), kwargs={}, options={}))
    first = broker.consume("handback", prefetch=4, timeout=200)
    assert next(first) is not None  # fetches all four, yields one
    first.requeue([])  # nothing started
    first.close()

    second = broker.consume("handback", prefetch=4, timeout=500)
    started = time.monotonic()
    got = [m for m in (next(second) for _ in range(8)) if m is not None]
    assert len(got) == 3  # the three buffered ones came back well before ack_wait (60 s) ...
    assert time.monotonic() - started < 10
    second.close()


def test_delayed_message_is_not_lag_until_due(broker: JetStreamBroker, worker: Worker) -> None:
    done: list[float] = []

    @dramatiq.actor(queue_name="later")
    def later() -> None:
        done.append(time.monotonic())

    sent = time.monotonic()
    later.send_with_options(delay=1500)
    assert broker.server_supports_schedules
    assert broker.lag() == {"later": 0}  # future work: KEDA must not scale for it
    broker.join("later", timeout=10_000)

    assert len(done) == 1
    assert done[0] - sent >= 1.4


def test_retries_back_off_then_succeed(broker: JetStreamBroker, worker: Worker) -> None:
    attempts: list[float] = []

    @dramatiq.actor(max_retries=3, min_backoff=300, max_backoff=400)
    def flaky() -> None:
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise RuntimeError("not yet")

    flaky.send()
    broker.join(flaky.queue_name, timeout=15_000)

    assert len(attempts) == 3
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert all(gap >= 0.1 for gap in gaps), gaps  # Dramatiq's jittered backoff, never immediate
    assert broker.dead_letter_count(flaky.queue_name) == 0


def test_a_retry_that_cannot_be_stored_brings_the_message_back(
    broker: JetStreamBroker, worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NATS away just when Dramatiq's Retries stores the retry: the message must come again, not be acked."""
    attempts: list[float] = []
    enqueue = broker.enqueue

    def enqueue_while_nats_is_away(message, *, delay=None):  # type: ignore[no-untyped-def]
        if delay and len(attempts) == 1:
            raise ConnectionClosed("nats: no response from stream")
        return enqueue(message, delay=delay)

    @dramatiq.actor(max_retries=3, min_backoff=100, max_backoff=200)
    def fails_once() -> None:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            raise RuntimeError("a transient failure")

    monkeypatch.setattr(broker, "enqueue", enqueue_while_nats_is_away)
    fails_once.send()
    assert wait_for(lambda: len(attempts) == 2, 20), "the message was acked although its retry was never stored"
    assert attempts[1] - attempts[0] >= 4  # handed back with a delay, not hammered
    broker.join(fails_once.queue_name, timeout=10_000)
    assert broker.dead_letter_count(fails_once.queue_name) == 0


def test_exhausted_retries_are_dead_lettered_with_the_reason(broker: JetStreamBroker, worker: Worker) -> None:
    @dramatiq.actor(queue_name="doomed", max_retries=1, min_backoff=50, max_backoff=100)
    def doomed(card: str) -> None:
        raise ValueError(f"cannot handle {card}")

    message = doomed.send("ace")
    with pytest.raises(ValueError, match="cannot handle ace"):
        broker.join("doomed", timeout=10_000)

    assert broker.dead_letter_count("doomed") == 1
    names = broker.names("doomed")
    dead = broker.run(broker.js.get_last_msg(f"{broker.prefix}_dead", names.dead_subject))
    assert dead.headers["Pipeline-Dead-Reason"] == "ValueError: cannot handle ace"
    assert dead.headers["Pipeline-Message-Id"] == message.message_id
    assert dramatiq.Message.decode(dead.data).args == ("ace",)
    dead_stream = broker.run(broker.js.stream_info(f"{broker.prefix}_dead"))
    assert dead_stream.config.max_age == 7 * 24 * 3600

    broker.join("doomed", fail_fast=False)  # the same state, without failing fast
    broker.flush("doomed")
    assert broker.dead_letter_count("doomed") == 0
    broker.join("doomed")


def test_an_undecodable_message_is_dead_lettered_and_the_worker_goes_on(
    broker: JetStreamBroker, worker: Worker
) -> None:
    seen: list[int] = []

    @dramatiq.actor(queue_name="mixed")
    def fine(n: int) -> None:
        seen.append(n)

    fine.send(1)
    broker.run(broker.js.publish(broker.names("mixed").subject, b"{not json"))
    fine.send(2)

    assert wait_for(lambda: sorted(seen) == [1, 2] and broker.dead_letter_count("mixed") == 1, 10)
    dead = broker.run(broker.js.get_last_msg(f"{broker.prefix}_dead", broker.names("mixed").dead_subject))
    assert dead.data == b"{not json"
    assert "DecodeError" in dead.headers["Pipeline-Dead-Reason"]


def test_republishing_the_same_message_is_deduplicated(broker: JetStreamBroker) -> None:
    @dramatiq.actor(queue_name="dedup")
    def once() -> None: ...

    message = once.message()
    broker.enqueue(message)
    broker.enqueue(message)  # e.g. a producer retrying after a lost PubAck

    assert broker.lag() == {"dedup": 1}


def test_batch_publishes_everything_and_waits_for_the_acks(broker: JetStreamBroker, worker: Worker) -> None:
    seen: set[int] = set()

    @dramatiq.actor(queue_name="bulk")
    def bulk(n: int) -> None:
        seen.add(n)

    with broker.batch():
        for n in range(500):
            bulk.send(n)
        group = dramatiq.group([bulk.message(n) for n in range(500, 510)])
        group.run()

    broker.join("bulk", timeout=20_000)
    assert seen == set(range(510))


def test_batch_raises_for_messages_that_were_not_stored(own_nats_server, prefix) -> None:
    broker = JetStreamBroker(own_nats_server.url, prefix=prefix, publish_timeout=1)
    broker.declare_queue("lost")
    broker.enqueue(dramatiq.Message(queue_name="lost", actor_name="x", args=(), kwargs={}, options={}))
    own_nats_server.kill()
    with pytest.raises(BatchPublishError) as raised, broker.batch():
        for _ in range(3):
            broker.enqueue(dramatiq.Message(queue_name="lost", actor_name="x", args=(), kwargs={}, options={}))
    assert len(raised.value.failed) == 3
    broker.close()


def test_send_raises_connection_closed_when_the_server_is_gone(own_nats_server, prefix) -> None:
    broker = JetStreamBroker(own_nats_server.url, prefix=prefix, publish_timeout=1)
    broker.declare_queue("gone")
    message = dramatiq.Message(queue_name="gone", actor_name="x", args=(), kwargs={}, options={})
    broker.enqueue(message)
    own_nats_server.kill()
    with pytest.raises(ConnectionClosed):
        broker.enqueue(message.copy(message_id="another"))
    broker.close()


def test_prefixes_isolate_pipelines_on_one_server(make_broker) -> None:
    blue, green = make_broker(prefix="blue" + str(id(object()))), make_broker(prefix="green" + str(id(object())))
    for broker in (blue, green):
        broker.declare_queue("shared")
    blue.enqueue(dramatiq.Message(queue_name="shared", actor_name="x", args=(), kwargs={}, options={}))

    assert blue.lag() == {"shared": 1}
    assert green.lag() == {"shared": 0}
    blue.flush_all()
    assert blue.lag() == {"shared": 0}


def test_join_times_out_and_knows_its_queues(broker: JetStreamBroker) -> None:
    @dramatiq.actor(queue_name="stuck")
    def stuck() -> None: ...

    stuck.send()  # no worker running
    with pytest.raises(QueueJoinTimeout):
        broker.join("stuck", timeout=200)
    with pytest.raises(QueueNotFound):
        broker.join("never-declared")


def test_streams_take_replicas_and_storage_settings(make_broker) -> None:
    broker = make_broker(storage="memory", replicas=1)
    broker.declare_queue("mem")
    broker.lag()
    info = broker.run(broker.js.stream_info(broker.names("mem").stream))
    assert info.config.storage == "memory"
    assert info.config.num_replicas == 1
    with pytest.raises(ValueError, match="storage"):
        JetStreamBroker("nats://127.0.0.1:1", storage="disk")


def test_messages_settle_against_the_consumer_that_fetched_them(broker: JetStreamBroker) -> None:
    """After a consumer restart Dramatiq acks old messages through the new consumer."""
    broker.declare_queue("handover")
    for n in range(6):
        broker.enqueue(dramatiq.Message(queue_name="handover", actor_name="x", args=(n,), kwargs={}, options={}))
    first = broker.consume("handover", prefetch=2, timeout=200)
    held = [next(first), next(first)]
    first.close()  # the consumer thread restarts; its two messages are still being worked on
    second = broker.consume("handover", prefetch=2, timeout=500)
    assert next(second) is not None and next(second) is not None

    for message in held:
        second.ack(message)

    assert wait_for(lambda: first.puller.held == 0, 5)
    assert second.puller.held == 2  # its own two, still unacked: its window is not overrun
    info = broker.run(broker.js.consumer_info(broker.names("handover").stream, "workers"))
    assert info.num_ack_pending == 2
    second.close()
