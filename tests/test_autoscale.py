"""The one-machine autoscaler: a burst into one queue grows that queue's pool only, and it shrinks after."""

from __future__ import annotations

import os
from pathlib import Path

import dramatiq

from pipeline.autoscale import Autoscaler, Policy
from pipeline.broker import JetStreamBroker
from pipeline.nats_server import NatsServer
from pipeline.workers import WorkerPool
from tests.conftest import read_records, wait_for

BURST = 300


def test_a_burst_grows_only_its_pool_and_every_message_runs_once(
    nats_server: NatsServer, prefix: str, record_file: Path, tmp_path: Path, make_broker
) -> None:
    broker: JetStreamBroker = make_broker()
    env = dict(os.environ, PIPELINE_NATS_URL=nats_server.url, TEST_PREFIX=prefix, TEST_RECORD_FILE=str(record_file))
    pools = {
        queue: WorkerPool(queue, env=env, threads=2, log_dir=tmp_path / "logs", module="tests.workerapp")
        for queue in ("work", "idle")
    }
    policies = {
        "work": Policy(
            "work", min_replicas=1, max_replicas=3, lag_threshold=50, cooldown=5, polling=0.5, down_window=3
        ),
        "idle": Policy(
            "idle", min_replicas=0, max_replicas=3, lag_threshold=50, cooldown=5, polling=0.5, down_window=3
        ),
    }
    for queue in pools:
        broker.declare_queue(queue)
    autoscaler = Autoscaler(broker.lag, pools, policies)
    autoscaler.start()
    try:
        assert wait_for(lambda: pools["work"].size == 1, 10), "the minimum was not started"
        with broker.batch():
            for n in range(BURST):
                broker.enqueue(dramatiq.Message(queue_name="work", actor_name="work", args=(n,),
                                                kwargs={"sleep": 0.05}, options={}))  # fmt: skip
        sizes: list[tuple[int, int]] = []

        def grown() -> bool:
            sizes.append((pools["work"].size, pools["idle"].size))
            return pools["work"].size == 3

        assert wait_for(grown, 5), f"work did not reach 3 processes within a few polls: {sizes[-5:]}"
        assert wait_for(lambda: len(read_records(record_file)) >= BURST, 60), "the burst was not drained"
        assert wait_for(lambda: pools["work"].size == 1, 20), "work did not shrink back after its cooldown"
        assert all(idle == 0 for _, idle in sizes), "the idle queue's pool grew"
        assert pools["idle"].size == 0
    finally:
        autoscaler.stop()
        for pool in pools.values():
            pool.stop()
    values = [value for value, _ in read_records(record_file)]
    assert sorted(values, key=int) == [str(n) for n in range(BURST)], "a message was lost or ran twice"
    assert len({pid for _, pid in read_records(record_file)}) >= 2, "the burst ran on one process only"
