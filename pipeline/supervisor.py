"""The lifecycle of ``pipeline up`` and ``pipeline autoscale``: start in order, stop in reverse, once.

Everything the command starts (the demo site, the NATS connection, the
metrics server, the worker pools and their autoscaler, the ingest, the
scheduler) is entered into one ``ExitStack`` as it starts, so however the
command ends (Ctrl-C, SIGTERM, an error half way through) what was started
is stopped in the reverse order, and nothing that was not started is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pipeline.outage import Outage
from pipeline.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageStatus:
    """One stage's line of the live view."""

    queue: str
    lag: int | None  # None while NATS cannot be read
    done: int
    errors: int
    replicas: int
    draining: int


class Supervisor:
    """Starts the parts of a pipeline on this machine and stops them in reverse order.

    Use as a context manager; each ``start_*`` method starts one part and
    registers its stop.  ``status()`` reads what the live view shows.
    """

    def __init__(self, settings: Settings, metrics_dir: str) -> None:
        self.settings = settings
        self.metrics_dir = metrics_dir
        self._results: dict[str, tuple[float, float]] = {}  # stage_results at the last status()
        self.home = settings.home
        self.broker: Any = None
        self.pools: dict[str, Any] = {}
        self.autoscaler: Any = None
        self.outage = Outage("pipeline up")
        self._engine: Any = None  # the database, for failures(); set by watch_failures()
        self._checks_seen: int | None = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def start_demo(self, engine: Any, on_alert: Callable[[dict[str, str], bytes], None]) -> Any:
        """The demo site and its monitors (``pipeline/demo.py``)."""
        from pipeline.demo import DemoSite, install_monitors

        site = DemoSite(on_alert)
        site.start()
        self._stack.callback(site.stop)
        install_monitors(engine, site)
        return site

    def watch_failures(self, engine: Any) -> None:
        """From now on ``failures()`` reports the checks that fail, read from this database."""
        self._engine = engine
        self.failures()

    def connect(self, broker: Any) -> Any:
        """Take the broker the workers' actors are declared on; closed last."""
        self.broker = broker
        self._stack.callback(broker.close)
        return broker

    def serve_metrics(self, queues: list[str], port: int, *, this_process: bool = False) -> Any:
        """``/metrics``: JetStream's lag of ``queues`` with the workers' directory (or this process's own
        metrics); None when the port is busy."""
        from pipeline import exporter

        try:
            directory = self.metrics_dir or None
            server = exporter.serve(self.broker, queues, port, multiprocess_dir=directory, this_process=this_process)
        except OSError as e:
            logger.debug("Cannot serve metrics on port %s: %s", port, e.strerror)
            return None
        self._stack.callback(server.shutdown)
        return server

    def start_pools(self, queues: list[str], policies: dict[str, Any], replicas: int, *, shared: bool = False) -> None:
        """A pool per queue, each replica as its Deployment runs it; autoscaled unless ``replicas`` fixes the size.

        ``shared``: other machines autoscale these queues too; this one runs its share of the count
        (:mod:`pipeline.members`)."""
        from pipeline.autoscale import Autoscaler, Policy
        from pipeline.machine import process_budget
        from pipeline.workers import WorkerPool

        unlisted = {"min_replicas": 1, "max_replicas": 1, "processes": 1}  # a queue of yours without a ScaledObject
        policies = {q: policies.get(q) or Policy(q, **unlisted) for q in queues}  # type: ignore[arg-type]
        if not shared:  # one machine keeps a replica of every stage: a cold start costs more than an idle worker
            policies = {q: replace(p, min_replicas=max(1, p.min_replicas)) for q, p in policies.items()}
        self._stack.callback(self._stop_pools)
        for queue, policy in policies.items():
            self.pools[queue] = WorkerPool(
                queue,
                env=worker_environment(self.settings, self.metrics_dir),
                log_dir=self.home / "logs",
                processes=policy.processes,
                threads=policy.threads,
                shutdown_timeout=policy.shutdown_timeout,
            )
        if replicas:
            for pool in self.pools.values():
                pool.resize(replicas)
            return
        members, me = None, ""
        if shared:
            from pipeline.members import MISSED_POLLS, Membership

            interval = min(policies[q].polling for q in queues)
            membership = Membership(self.broker, queues, ttl=interval * MISSED_POLLS)
            self._stack.callback(membership.leave)  # runs after the pools stopped: the share goes back at once
            members, me = membership.heartbeat, membership.name
        budget = process_budget()
        logger.info("Autoscaling within %d worker processes (this machine's cores and memory)", budget)
        self.autoscaler = Autoscaler(self.broker.lag, self.pools, policies, members=members, me=me, budget=budget)
        self.autoscaler.start()

    def _stop_pools(self) -> None:
        if self.autoscaler is not None:
            self.autoscaler.stop()
        for pool in self.pools.values():
            pool.resize(0)  # every replica drains at once, rather than one pool after another
        for pool in self.pools.values():
            pool.stop()

    def start_ingest(self) -> None:
        """Events from NATS subjects into the stages, in a thread of this process."""
        from pipeline.ingest import Ingest
        from pipeline.runtime import context

        ingest = Ingest(self.broker, context(self.broker, self.settings))
        ingest.declare()  # before anyone publishes: core NATS drops what no stream captures
        ingest.start()
        self._stack.callback(ingest.stop)

    def start_scheduler(self) -> None:
        """Due monitors become events, in a thread of this process."""
        from pipeline.runtime import context
        from pipeline.scheduler import Scheduler

        scheduler = Scheduler(self.broker, context(self.broker, self.settings))
        scheduler.start()
        self._stack.callback(scheduler.stop)

    def failures(self) -> list[Any]:
        """The checks that failed since the last call, by stage (``pipeline.queries.Failures``); none at
        the first call, which only marks where the ``checks`` table ends."""
        from pipeline import queries

        try:
            self._checks_seen, failed = queries.failed_checks_since(self._engine, self._checks_seen)
        except Exception:  # the database busy or away: the status line goes on, the next call catches up
            logger.debug("Could not read failed checks.", exc_info=True)
            return []
        return failed

    def status(self) -> list[StageStatus]:
        """Each pool's stage, in flow order: lag, messages done and failed since the last call, replicas."""
        from pipeline.observability import forget_dead_processes, stage_results

        forget_dead_processes(self.metrics_dir)
        results = stage_results(self.metrics_dir) if self.metrics_dir else {}
        before, self._results = self._results, results
        try:
            lag: dict[str, int | None] = dict(self.broker.lag(set(self.pools)))
            self.outage.ok()
        except Exception as e:  # a server restart or a leader election: say so, and carry on
            self.outage.failed(e)
            lag = {}

        def since(queue: str, which: int) -> int:
            return max(0, round(results.get(queue, (0.0, 0.0))[which] - before.get(queue, (0.0, 0.0))[which]))

        return [
            StageStatus(q, lag.get(q), since(q, 0), since(q, 1), pool.size, pool.draining)
            for q, pool in self.pools.items()
        ]


def worker_environment(settings: Settings, metrics_dir: str) -> dict[str, str]:
    """A worker process's environment: this one's, with the ``PIPELINE_*`` variables of ``settings`` (and
    not of the shell) and the shared metrics directory."""
    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("PIPELINE_") and name not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")
    }
    shared = {"dramatiq_prom_db": metrics_dir, "PROMETHEUS_MULTIPROC_DIR": metrics_dir} if metrics_dir else {}
    return {**inherited, **settings.environment(), **shared}


def share_metrics_directory(home: Path) -> str:
    """Every process ``up`` runs writes its metrics to one directory, emptied first, which the exporter serves.

    Dramatiq's ``dramatiq_prom_db`` names it, else ``<home>/metrics``; set in this process's environment
    before prometheus-client is imported (it reads ``PROMETHEUS_MULTIPROC_DIR`` then), and given to the workers.
    """
    directory = Path(os.environ.get("dramatiq_prom_db") or (home / "metrics").resolve())
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):  # counters of a previous run are not this run's
        stale.unlink()
    os.environ["dramatiq_prom_db"] = os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    return str(directory)


class HomeInUseError(RuntimeError):
    """Another ``pipeline up`` runs with this home."""


def hold_home(home: Path) -> Any:
    """Take ``<home>/up.lock`` for as long as the returned file stays open (the process's life).

    A second ``pipeline up`` on the same home would join the first's NATS server and database and run
    a second set of every pool, scheduler and (with ``--demo``) a site whose monitors replace the
    first's.  Raises ``HomeInUseError`` naming the process that holds it.  ``flock``: released by the
    kernel however the holder ends, SIGKILL included; the descriptor is not inherited by the workers.
    """
    import fcntl

    home.mkdir(parents=True, exist_ok=True)
    held = (home / "up.lock").open("a+")
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        held.seek(0)
        holder = held.read().strip() or "unknown"
        held.close()
        raise HomeInUseError(f"another `pipeline up` (pid {holder}) runs with the home {home}") from None
    held.seek(0)
    held.truncate()
    held.write(f"{os.getpid()}\n")
    held.flush()
    return held


_stop_requested: threading.Event | None = None


def stop_on_signals() -> threading.Event:
    """From now on Ctrl-C, SIGTERM (``docker stop``, a pod's deletion) and SIGHUP (its terminal closed) ask
    for an orderly stop instead of ending the process: call it first thing, so a signal that comes while
    the parts start still stops them all.  Idempotent; the event is set when a stop is asked for."""
    import signal

    global _stop_requested
    if _stop_requested is None:
        stopped = _stop_requested = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, lambda *_: stopped.set())
    return _stop_requested


def wait_until_stopped(tick: Callable[[], None] | None = None, *, every: float = 5.0, duration: float = 0) -> None:
    """Block until a stop is asked for (``stop_on_signals``), or ``duration`` seconds when not 0, calling
    ``tick`` every ``every`` seconds.  The caller then stops what it started, in order."""
    stopped = stop_on_signals()
    started = time.monotonic()
    while not stopped.wait(every if not duration else max(0.0, min(every, started + duration - time.monotonic()))):
        if duration and time.monotonic() - started >= duration:
            break
        if tick is not None:
            tick()
    logger.info("Stopping after %.0f s: workers finish or return their messages.", time.monotonic() - started)
