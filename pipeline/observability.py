"""Metrics in worker processes: Dramatiq's Prometheus middleware, served where the deployment wants.

Dramatiq's middleware writes its metrics (messages, errors, retries,
rejects, in-flight, durations per queue and actor) to a multiprocess
directory and, by default, serves them from each ``dramatiq`` command on
port 9191.  Several worker pools on one machine would fight over that
port, so here a worker serves its own metrics only when
``dramatiq_prom_port`` is set (one worker per container: compose,
Kubernetes); otherwise the machine's exporter serves the shared directory.
It also counts worker processes per queue, for the dashboards.
"""

from __future__ import annotations

import os
from pathlib import Path

from dramatiq import Broker, Worker
from dramatiq.common import q_name
from dramatiq.middleware.prometheus import Prometheus

from pipeline import metrics


class WorkerMetrics(Prometheus):
    @property
    def forks(self) -> list:
        serve = os.environ.get("dramatiq_prom_port")  # Dramatiq's own setting
        return super().forks if serve else []

    def after_worker_boot(self, broker: Broker, worker: Worker) -> None:
        for queue in {q_name(name) for name in worker.consumers}:  # not the delay queues
            metrics.WORKER_PROCESSES.labels(queue).set(1)

    def after_consumer_stall(self, broker: Broker, queue_name: str, waiting: int | None, seconds: float) -> None:
        """The JetStream broker's signal: a consumer got nothing for a while although messages wait."""
        metrics.CONSUMER_STALLS.labels(queue_name).inc()


def forget_dead_processes(directory: str | Path) -> None:
    """Drop the live gauges of worker processes that died without shutting down (killed, crashed).

    Dramatiq's middleware does this for a worker that stops cleanly; a
    killed one would otherwise count as a live worker until the next start.
    """
    from prometheus_client import multiprocess

    for path in Path(directory).glob("gauge_live*_*.db"):
        pid = path.stem.rsplit("_", 1)[1]
        if not pid.isdigit():  # not prometheus-client's file
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(int(pid), str(directory))
        except PermissionError:  # alive, another user's
            pass


def stage_results(directory: str | Path) -> dict[str, tuple[float, float]]:
    """Per stage, what its live and past worker processes counted in ``pipeline_checks_total``:
    (results of every outcome, of which errors), since each process started.

    Every stage counts each message it finishes (a check handed on counts as much as one that
    ends), unlike the ``checks`` table, which holds a check's end only.  A process marked dead
    (:func:`forget_dead_processes`) keeps its counters: totals never go down while ``up`` runs.
    """
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, str(directory))
    results: dict[str, tuple[float, float]] = {}
    for family in registry.collect():
        if family.name != "pipeline_checks":
            continue
        for sample in family.samples:
            if sample.name == "pipeline_checks_total":
                stage, outcome = sample.labels["stage"], sample.labels["outcome"]
                total, errors = results.get(stage, (0.0, 0.0))
                results[stage] = (total + sample.value, errors + (sample.value if outcome == "error" else 0.0))
    return results
