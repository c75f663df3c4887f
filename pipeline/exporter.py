"""Serving the metrics: the workers' own, and the queues' lag and dead letters read from JetStream.

Two kinds of numbers, two sources:

- what worker processes count (Dramatiq's middleware and
  :mod:`pipeline.metrics`) lives in a multiprocess directory; on one machine
  (``pipeline up``) every worker writes to the same one and this exporter
  serves them all, so worker pools can grow and shrink without anyone
  re-configuring Prometheus;
- what no worker can count is read from JetStream at each scrape: per
  queue, ``num_pending + num_ack_pending`` (the lag KEDA scales on) and
  the dead letters kept.  One exporter per pipeline serves these
  (``pipeline exporter``; ``pipeline up`` starts one).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, Metric, start_http_server, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from pipeline.broker import JetStreamBroker

logger = logging.getLogger(__name__)

#: The default port of ``pipeline exporter`` (and of ``pipeline up``'s exporter).
DEFAULT_PORT = 9464


class JetStreamCollector(Collector):
    """Per queue: lag, its two parts, and dead letters, read from JetStream when Prometheus scrapes."""

    def __init__(self, broker: JetStreamBroker, queues: list[str]) -> None:
        self.broker = broker
        self.queues = queues

    def collect(self) -> Iterator[GaugeMetricFamily]:
        lag = GaugeMetricFamily(
            "pipeline_queue_lag", "Messages waiting or in flight: num_pending + num_ack_pending", labels=["queue"]
        )
        pending = GaugeMetricFamily(
            "pipeline_queue_pending", "Messages not yet delivered to a worker", labels=["queue"]
        )
        in_flight = GaugeMetricFamily(
            "pipeline_queue_ack_pending", "Messages delivered, not yet acknowledged", labels=["queue"]
        )
        dead = GaugeMetricFamily(
            "pipeline_dead_letters", "Dead letters kept, per queue they came from", labels=["queue"]
        )
        up = GaugeMetricFamily("pipeline_exporter_jetstream_up", "1 when the last read of JetStream worked")
        try:
            for queue in self.queues:
                info = self.broker.consumer_info(queue)
                lag.add_metric([queue], info.num_pending + info.num_ack_pending)
                pending.add_metric([queue], info.num_pending)
                in_flight.add_metric([queue], info.num_ack_pending)
            for queue in [*self.queues, "events"]:
                dead.add_metric([queue], self.broker.dead_letter_count(queue))
        except Exception:
            logger.warning("Reading JetStream for metrics failed", exc_info=True)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield from (lag, pending, in_flight, dead, up)


class ThisProcess(Collector):
    """This process's own metrics (the ingest's, when it runs here) while they are not in the directory."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def registry(broker: JetStreamBroker, queues: list[str], multiprocess_dir: str | None) -> CollectorRegistry:
    registry = CollectorRegistry()
    if queues:  # one exporter per pipeline reads JetStream; others serve only their processes' metrics
        registry.register(JetStreamCollector(broker, queues))
    if multiprocess_dir and Path(multiprocess_dir).is_dir():
        MultiProcessCollector(registry, path=multiprocess_dir)
    if values.ValueClass is values.MutexValue:  # in-memory mode: nothing of this process is in the directory
        registry.register(ThisProcess())
    return registry


def serve(broker: JetStreamBroker, queues: list[str], port: int = DEFAULT_PORT, host: str = "0.0.0.0") -> WSGIServer:
    """Serve ``/metrics`` in a thread; the workers' directory is ``$PROMETHEUS_MULTIPROC_DIR`` when set."""
    server, _ = start_http_server(port, host, registry(broker, queues, os.environ.get("PROMETHEUS_MULTIPROC_DIR")))
    return server
