"""The worker the autoscaling benchmark runs: ``dramatiq bench.autoscale_worker``.

One actor that waits ``$BENCH_SERVICE_SECONDS`` (a slow website, as a fetch
is) and appends ``<n> <seconds since enqueued>`` to ``$BENCH_RECORD_FILE``.
"""

from __future__ import annotations

import os
import time

import dramatiq

from pipeline.broker import JetStreamBroker

broker = JetStreamBroker(os.environ["PIPELINE_NATS_URL"], prefix=os.environ["BENCH_PREFIX"])
dramatiq.set_broker(broker)
SERVICE_SECONDS = float(os.environ.get("BENCH_SERVICE_SECONDS", "1.0"))


@dramatiq.actor(queue_name="bench", max_retries=0)
def visit(n: int, enqueued: float) -> None:
    time.sleep(SERVICE_SECONDS)
    with open(os.environ["BENCH_RECORD_FILE"], "a") as f:
        f.write(f"{n} {time.time() - enqueued:.3f}\n")
