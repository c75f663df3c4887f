"""A pool started from zero: seconds from the scale-up (the worker process spawned) to its first message handled.

    python bench/coldstart.py                 # each stage, 5 starts each
    python bench/coldstart.py --starts 10

Per stage, one message waits in the queue; a ``dramatiq actors --queues
<stage> --processes 1 --threads 1`` process is started as the autoscaler
starts a replica, and the clock stops when the message has left the queue
(JetStream's lag back to 0: handled, here by failing at once, since the jobs
point at nothing).  The database is already migrated, as it is on any scale-up
but the very first.  Goal: at most 2 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dramatiq

from pipeline.broker import JetStreamBroker
from pipeline.db import make_engine, migrate
from pipeline.names import STAGES
from pipeline.nats_server import NatsServer


def one_start(stage: str, env: dict[str, str], broker: JetStreamBroker) -> float:
    job = {"source": "bench", "url": "http://10.255.255.1/", "trace": uuid.uuid4().hex, "body": "sha256:missing",
           "after_id": 0, "finding_id": 0, "target": "https://10.255.255.1/", "part": 1}  # fmt: skip
    broker.enqueue(dramatiq.Message(queue_name=stage, actor_name=stage, args=(job,), kwargs={}, options={}))
    started = time.perf_counter()
    worker = subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "actors", "--queues", stage, "--processes", "1", "--threads", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        while broker.lag({stage})[stage] > 0:
            if time.perf_counter() - started > 60:
                raise RuntimeError(f"{stage}: the message was not handled within 60 s")
            time.sleep(0.01)
        return time.perf_counter() - started
    finally:
        worker.terminate()
        worker.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, NatsServer(Path(tmp) / "nats") as server:
        prefix = "cold" + uuid.uuid4().hex[:6]
        database = f"sqlite:///{tmp}/bench.db"
        migrate(make_engine(database))
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")},
               "PIPELINE_NATS_URL": server.url, "PIPELINE_PREFIX": prefix, "PIPELINE_DATABASE_URL": database,
               "PIPELINE_HOME": str(Path(tmp) / "home"), "dramatiq_prom_db": str(Path(tmp) / "metrics")}  # fmt: skip
        Path(tmp, "metrics").mkdir()
        broker = JetStreamBroker(server.url, prefix=prefix)
        rows = []
        for stage in STAGES:
            broker.declare_queue(stage)
            times = [one_start(stage, env, broker) for _ in range(args.starts)]
            rows.append((stage, statistics.median(times), max(times)))
        broker.close()
    print(f"\nscale-up to first message handled, {args.starts} starts per stage, {os.cpu_count()} cores\n")
    print("| stage | median s | worst s | goal 2 s |")
    print("|---|---:|---:|---|")
    for stage, median, worst in rows:
        print(f"| {stage} | {median:.2f} | {worst:.2f} | {'met' if worst <= 2 else 'MISSED'} |")


if __name__ == "__main__":
    main()
