"""Actors for the tests that run workers as real processes (``dramatiq tests.workerapp``).

Each processed message appends ``<value> <pid>`` to ``$TEST_RECORD_FILE``;
small ``O_APPEND`` writes are atomic, so several processes can share it.
"""

from __future__ import annotations

import os
import time

import dramatiq

from pipeline.broker import JetStreamBroker

broker = JetStreamBroker(prefix=os.environ["TEST_PREFIX"], ack_wait=float(os.environ.get("TEST_ACK_WAIT", "30")))
if os.environ.get("TEST_PROMETHEUS"):
    from dramatiq.middleware.prometheus import Prometheus

    broker.add_middleware(Prometheus())
dramatiq.set_broker(broker)


def record(value: object) -> None:
    with open(os.environ["TEST_RECORD_FILE"], "a") as f:
        f.write(f"{value} {os.getpid()}\n")


@dramatiq.actor(queue_name="work", max_retries=0)
def work(n: int, sleep: float = 0.0, mark_start: bool = False) -> None:
    if mark_start:
        record(f"start:{n}")
    time.sleep(sleep)
    record(n)


@dramatiq.actor(queue_name="idle", max_retries=0)
def idle() -> None:
    record("idle")
