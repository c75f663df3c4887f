"""Workers as real ``dramatiq`` processes: sharing a queue, crashes, server restarts."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import dramatiq
import pytest

from pipeline.broker import JetStreamBroker
from pipeline.nats_server import NatsServer
from tests.conftest import read_records, wait_for


def work_actor(broker: JetStreamBroker) -> dramatiq.Actor:
    """The producer's handle on ``tests.workerapp.work`` (same name and queue)."""

    @dramatiq.actor(actor_name="work", queue_name="work", broker=broker)
    def work(n: int, sleep: float = 0.0) -> None: ...

    return work


def processed(record_file: Path) -> Counter[str]:
    return Counter(value for value, _ in read_records(record_file))


def test_two_worker_processes_share_a_queue(broker, spawn_workers, record_file) -> None:
    work = work_actor(broker)
    first, second = spawn_workers(), spawn_workers()
    with broker.batch():
        for n in range(300):
            work.send(n, 0.005)

    assert wait_for(lambda: len(read_records(record_file)) >= 300, 60)
    broker.join("work", timeout=10_000)
    records = read_records(record_file)
    assert Counter(value for value, _ in records) == Counter(str(n) for n in range(300))  # each exactly once
    assert len({pid for _, pid in records}) == 2  # both processes took work
    first.stop()
    second.stop()


def test_a_task_longer_than_ack_wait_runs_exactly_once(broker, spawn_workers, record_file) -> None:
    work = work_actor(broker)
    spawn_workers(ack_wait=1)
    spawn_workers(ack_wait=1)
    work.send(7, 4.0)  # four times ack_wait: in_progress heartbeats keep it with its worker

    assert wait_for(lambda: processed(record_file)["7"] >= 1, 30)
    broker.join("work", timeout=10_000)
    assert processed(record_file) == Counter({"7": 1})


def test_kill_9_of_a_worker_under_load_loses_no_message(broker, spawn_workers, record_file) -> None:
    work = work_actor(broker)
    victim = spawn_workers(ack_wait=2)
    with broker.batch():
        for n in range(400):
            work.send(n, 0.01)
    assert wait_for(lambda: len(read_records(record_file)) >= 50, 60)
    victim.kill()  # SIGKILL: no shutdown; its prefetched and running messages are unacked
    assert len(processed(record_file)) < 400  # it died mid-load

    survivor = spawn_workers(ack_wait=2)
    assert wait_for(lambda: set(processed(record_file)) == {str(n) for n in range(400)}, 90)
    broker.join("work", timeout=30_000)
    assert set(processed(record_file)) == {str(n) for n in range(400)}
    survivor.stop()


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_a_server_restart_under_load_loses_no_message(
    own_nats_server: NatsServer, prefix, spawn_workers, record_file, how
) -> None:
    broker = JetStreamBroker(own_nats_server.url, prefix=prefix)
    work = work_actor(broker)
    workers = [spawn_workers(url=own_nats_server.url, ack_wait=3) for _ in range(2)]
    with broker.batch():
        for n in range(400):
            work.send(n, 0.02)
    assert wait_for(lambda: len(read_records(record_file)) >= 50, 60)

    getattr(own_nats_server, how)()
    assert len(processed(record_file)) < 400  # the server went away mid-load  # graceful stop, or SIGKILL
    own_nats_server.start()
    with broker.batch():  # the producer reconnects too
        for n in range(400, 500):
            work.send(n, 0.0)

    everything = {str(n) for n in range(500)}
    assert wait_for(lambda: set(processed(record_file)) == everything, 120)
    assert all(w.process.poll() is None for w in workers)  # workers carried on
    broker.join("work", timeout=30_000)
    broker.close()
