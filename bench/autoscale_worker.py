"""The worker the autoscaling benchmark runs: ``dramatiq bench.autoscale_worker``.

One actor that waits ``$BENCH_SERVICE_SECONDS`` (a slow website, as a fetch
is) and appends ``<n> <seconds since enqueued>`` to ``$BENCH_RECORD_FILE``.
Each worker process, once booted, appends its pid to ``$BENCH_BOOT_FILE``,
so the benchmark starts the trace only when the starting pool is up.
"""

from __future__ import annotations

import os
import time

import dramatiq

from pipeline.broker import JetStreamBroker


class BootMarker(dramatiq.Middleware):
    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        with open(os.environ["BENCH_BOOT_FILE"], "a") as f:
            f.write(f"{os.getpid()}\n")


broker = JetStreamBroker(os.environ["PIPELINE_NATS_URL"], prefix=os.environ["BENCH_PREFIX"])
broker.add_middleware(BootMarker())
dramatiq.set_broker(broker)
SERVICE_SECONDS = float(os.environ.get("BENCH_SERVICE_SECONDS", "1.0"))


@dramatiq.actor(queue_name="bench", max_retries=0)
def visit(n: int, enqueued: float) -> None:
    time.sleep(SERVICE_SECONDS)
    with open(os.environ["BENCH_RECORD_FILE"], "a") as f:
        f.write(f"{n} {time.time() - enqueued:.3f}\n")
