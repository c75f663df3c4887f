"""Dramatiq's standard middleware and composition features on the JetStream broker."""

from __future__ import annotations

import asyncio
import time
import urllib.request

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.middleware import AsyncIO
from dramatiq.rate_limits.backends import StubBackend as StubRateLimiterBackend
from dramatiq.results import Results
from dramatiq.results.backends import StubBackend

from pipeline.broker import JetStreamBroker
from pipeline.nats_server import free_port
from tests.conftest import wait_for


@pytest.fixture
def start_worker(broker: JetStreamBroker):
    workers: list[Worker] = []

    def start() -> Worker:
        broker.emit_after("process_boot")  # as the dramatiq CLI does: starts TimeLimit's timer
        worker = Worker(broker, worker_timeout=100, worker_threads=4)
        worker.start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


def test_results_middleware_returns_values(broker: JetStreamBroker, start_worker) -> None:
    broker.add_middleware(Results(backend=StubBackend()))

    @dramatiq.actor(store_results=True)
    def square(n: int) -> int:
        return n * n

    start_worker()
    message = square.send(12)
    assert message.get_result(block=True, timeout=10_000) == 144


def test_pipelines_pass_results_along(broker: JetStreamBroker, start_worker) -> None:
    broker.add_middleware(Results(backend=StubBackend()))

    @dramatiq.actor(store_results=True)
    def double(n: int) -> int:
        return 2 * n

    @dramatiq.actor
    def add(n: int, m: int) -> int:
        return n + m

    start_worker()
    pipe = dramatiq.pipeline([double.message(5), add.message(1), double.message()]).run()
    assert pipe.get_result(block=True, timeout=10_000) == 22


def test_group_completion_callback_fires_once(broker: JetStreamBroker, start_worker) -> None:
    from dramatiq.middleware import GroupCallbacks

    broker.add_middleware(GroupCallbacks(StubRateLimiterBackend()))
    finished: list[str] = []
    done: list[int] = []

    @dramatiq.actor
    def part(n: int) -> None:
        done.append(n)

    @dramatiq.actor
    def whole() -> None:
        finished.append("all")

    start_worker()
    parts = dramatiq.group(part.message(n) for n in range(10))
    parts.add_completion_callback(whole.message())
    parts.run()

    assert wait_for(lambda: finished == ["all"], 15)
    assert sorted(done) == list(range(10))


def test_callbacks_on_success_and_failure(broker: JetStreamBroker, start_worker) -> None:
    outcomes: list[str] = []

    @dramatiq.actor
    def succeeded(message_data, result) -> None:
        outcomes.append(f"ok:{result}")

    @dramatiq.actor
    def failed(message_data, exception_data) -> None:
        outcomes.append(f"failed:{exception_data['type']}")

    @dramatiq.actor(max_retries=0)
    def maybe(n: int) -> int:
        if n < 0:
            raise ArithmeticError("negative")
        return n

    start_worker()
    maybe.send_with_options(args=(3,), on_success=succeeded, on_failure=failed)
    maybe.send_with_options(args=(-1,), on_success=succeeded, on_failure=failed)

    assert wait_for(lambda: sorted(outcomes) == ["failed:ArithmeticError", "ok:3"], 15)


def test_time_limit_interrupts_and_dead_letters(broker: JetStreamBroker, start_worker) -> None:
    @dramatiq.actor(queue_name="limited", time_limit=300, max_retries=0)
    def too_slow() -> None:
        for _ in range(100):
            time.sleep(0.05)

    start_worker()
    too_slow.send()
    with pytest.raises(dramatiq.middleware.TimeLimitExceeded):
        broker.join("limited", timeout=15_000)
    assert broker.dead_letter_count("limited") == 1


def test_age_limit_skips_stale_messages(broker: JetStreamBroker, start_worker) -> None:
    ran: list[int] = []

    @dramatiq.actor(queue_name="aged", max_age=200)
    def fresh_only(n: int) -> None:
        ran.append(n)

    fresh_only.send(1)  # nobody consumes for 500 ms: it is too old when it is read
    time.sleep(0.5)
    start_worker()
    fresh_only.send(2)
    broker.join("aged", timeout=10_000, fail_fast=False)

    assert ran == [2]
    assert broker.dead_letter_count("aged") == 1  # skipped messages are dead-lettered, as on every broker


def test_async_actors_run(broker: JetStreamBroker, start_worker) -> None:
    broker.add_middleware(AsyncIO())
    seen: list[int] = []

    @dramatiq.actor
    async def fetch_like(n: int) -> None:
        await asyncio.sleep(0.01)
        seen.append(n)

    start_worker()
    for n in range(20):
        fetch_like.send(n)
    broker.join(fetch_like.queue_name, timeout=10_000)
    assert sorted(seen) == list(range(20))


def test_prometheus_middleware_exports_from_a_worker_process(broker, spawn_workers, record_file, tmp_path) -> None:
    @dramatiq.actor(actor_name="work", queue_name="work", broker=broker)
    def work(n: int, sleep: float = 0.0) -> None: ...

    port = free_port()
    spawn_workers(
        TEST_PROMETHEUS="1",
        dramatiq_prom_port=str(port),
        dramatiq_prom_host="127.0.0.1",
        dramatiq_prom_db=str(tmp_path / "prom"),
    )
    for n in range(5):
        work.send(n)
    broker.join("work", timeout=30_000)

    def exported() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                body = response.read().decode()
        except OSError:
            return False
        return 'dramatiq_messages_total{actor_name="work",queue_name="work"} 5.0' in body

    assert wait_for(exported, 30, interval=0.5)
