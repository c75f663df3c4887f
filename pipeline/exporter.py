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
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, Metric, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from pipeline.broker import JetStreamBroker
from pipeline.names import LAG_METRIC
from pipeline.outage import Outage

logger = logging.getLogger(__name__)

#: The default port of ``pipeline exporter`` (and of ``pipeline up``'s exporter).
DEFAULT_PORT = 9464

#: Seconds a scrape may spend reading JetStream: well inside Prometheus' scrape timeout, so a NATS
#: outage shows as ``pipeline_exporter_jetstream_up 0`` instead of a failed scrape.
READ_TIMEOUT = 2.5


class JetStreamCollector(Collector):
    """Per queue: lag, its two parts, and dead letters, read from JetStream when Prometheus scrapes."""

    def __init__(self, broker: JetStreamBroker, queues: list[str]) -> None:
        self.broker = broker
        self.queues = queues
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jetstream-metrics")
        self.outage = Outage("exporter: metrics show pipeline_exporter_jetstream_up 0", logger)

    def _read(self) -> tuple[list[tuple[str, int, int]], list[tuple[str, int]]]:
        consumers = []
        for queue in self.queues:
            info = self.broker.consumer_info(queue)
            consumers.append((queue, info.num_pending or 0, info.num_ack_pending or 0))
        dead = [(queue, self.broker.dead_letter_count(queue)) for queue in [*self.queues, "events"]]
        return consumers, dead

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("pipeline_exporter_jetstream_up", "1 when the last read of JetStream worked")
        try:
            consumers, dead_letters = self._reader.submit(self._read).result(timeout=READ_TIMEOUT)
            self.outage.ok()
        except Exception as e:  # failed, or took over READ_TIMEOUT
            self.outage.failed(e)
            up.add_metric([], 0)
            yield up
            return
        lag = GaugeMetricFamily(
            LAG_METRIC, "Messages waiting or in flight: num_pending + num_ack_pending", labels=["queue"]
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
        for queue, waiting, processing in consumers:
            lag.add_metric([queue], waiting + processing)
            pending.add_metric([queue], waiting)
            in_flight.add_metric([queue], processing)
        for queue, count in dead_letters:
            dead.add_metric([queue], count)
        up.add_metric([], 1)
        yield from (lag, pending, in_flight, dead, up)


class ThisProcess(Collector):
    """This process's own metrics, for a process that runs work itself and keeps its metrics in memory."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def registry(
    broker: JetStreamBroker, queues: list[str], *, multiprocess_dir: str | None = None, this_process: bool = False
) -> CollectorRegistry:
    """JetStream's figures for ``queues``, the metrics of the processes writing to ``multiprocess_dir``,
    and (``this_process``) this process's own, kept in memory."""
    registry = CollectorRegistry()
    if queues:  # one exporter per pipeline reads JetStream; others serve only their processes' metrics
        registry.register(JetStreamCollector(broker, queues))
    if multiprocess_dir:
        MultiProcessCollector(registry, path=multiprocess_dir)
    if this_process:
        registry.register(ThisProcess())
    return registry


def serve(
    broker: JetStreamBroker,
    queues: list[str],
    port: int = DEFAULT_PORT,
    host: str = "0.0.0.0",
    *,
    multiprocess_dir: str | None = None,
    this_process: bool = False,
) -> WSGIServer:
    """Serve ``/metrics`` in a thread."""
    served = registry(broker, queues, multiprocess_dir=multiprocess_dir, this_process=this_process)
    server, _ = start_http_server(port, host, served)
    return server
