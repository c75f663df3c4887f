"""``pipeline up``, ``autoscale``, ``scheduler`` and ``exporter``: the long-running commands.

Each is a thin layer over ``pipeline.supervisor``: it reads its options,
starts the parts in order, waits for Ctrl-C or SIGTERM and lets the
supervisor stop them in reverse order.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from pipeline.cli.common import bad_input, connected_broker, engine, fail, nats_url, settings
from pipeline.cli.live import StatusView

#: Seconds before the same failure (stage and reason) is said again above the status: a monitor that keeps
#: failing every 30 s would otherwise bury the status under the same line.
REPEAT_AFTER = 600.0

MANIFESTS_HELP = "A directory of KEDA manifests whose policy overrides the built-in one (pipeline/policy.py)."


def up(
    replicas: int = typer.Option(0, min=0, help="Replicas per queue, fixed (0: each pool autoscaled on its lag)."),
    manifests: Path = typer.Option(None, help=MANIFESTS_HELP),
    interval: float = typer.Option(2.0, min=0.1, help="Seconds between status lines."),
    duration: float = typer.Option(0, min=0, help="Stop after this many seconds (0: run until Ctrl-C)."),
    demo: bool = typer.Option(False, "--demo", help="Also serve a local site whose pages change, with monitors on it."),
) -> None:
    """Run the pipeline on this machine: NATS, a worker pool per queue sized on its lag, metrics, a live status."""
    from pipeline.supervisor import (
        HomeInUseError,
        Supervisor,
        hold_home,
        share_metrics_directory,
        stop_on_signals,
        wait_until_stopped,
    )

    policies = _policies(manifests)
    stop_on_signals()  # from here on a SIGTERM, even while the parts start, stops them all in order
    if demo:
        _keep_to_the_demo()
    try:
        _held = hold_home(settings().home)  # until this command returns, at the end of the process
    except HomeInUseError as e:
        fail(f"{e}: stop it first, or give this one its own PIPELINE_HOME")
    metrics_dir = share_metrics_directory(settings().home)  # before anything imports prometheus-client
    from pipeline import exporter

    nats_url()
    connected_broker().close()  # NATS, then the database, checked before the banner and the heavy imports
    database = engine()
    broker = _actors_broker()
    queues = _flow_order(broker.get_declared_queues())
    view = StatusView(interval)
    with Supervisor(settings(), metrics_dir) as supervisor:
        supervisor.connect(broker)
        if demo:
            site = supervisor.start_demo(database, _show_alert(view.alert))
            typer.echo(f"Demo site at {site.url} (/kettle, /status, /changelog): pages change every 20 s")
        typer.echo(f"NATS {broker.safe_url}; queues: {', '.join(queues) or '-'}")
        port = _port(exporter.DEFAULT_PORT)
        if port:
            if supervisor.serve_metrics(queues, port) is None:
                typer.echo(f"warning: cannot serve metrics on port {port}; set PIPELINE_METRICS_PORT", err=True)
            else:
                typer.echo(f"Metrics at http://127.0.0.1:{port}/metrics")
        supervisor.start_pools(queues, policies, replicas)
        supervisor.start_ingest()
        supervisor.start_scheduler()
        typer.echo(f"Publish events to {broker.prefix}.events.check | .monitor | .content (JSON; see docs/schemas/)")
        with view:
            supervisor.watch_failures(database)
            said: dict[tuple[str, str], float] = {}

            def show_status() -> None:
                now = time.monotonic()
                for key in [key for key, at in said.items() if now - at >= REPEAT_AFTER]:
                    del said[key]  # may be said again; and many monitors' reasons do not pile up for ever
                for failed in supervisor.failures():  # above the status: a refused address shows at once
                    if (failed.stage, failed.latest) not in said:
                        said[(failed.stage, failed.latest)] = now
                        view.alert(_failure_line(failed))
                view.update(supervisor.status(), supervisor.outage.describe())

            show_status()
            wait_until_stopped(show_status, every=interval, duration=duration)
        typer.echo("Stopping: workers finish or return their messages...")
    typer.echo("Stopped: every worker has ended.")  # the supervisor's exit waited for each


def autoscale(
    queue: list[str] = typer.Option(None, help="Only this queue (repeat for several) [default: every stage]."),
    manifests: Path = typer.Option(None, help=MANIFESTS_HELP),
) -> None:
    """Run worker pools on this machine, each resized from its queue's lag by the KEDA manifests' policy.

    Only workers: run `pipeline scheduler` once beside them, and `pipeline exporter` on this machine
    (with PROMETHEUS_MULTIPROC_DIR set to the directory printed) to serve their metrics.
    """
    from pipeline.names import STAGES
    from pipeline.supervisor import Supervisor, share_metrics_directory, stop_on_signals, wait_until_stopped

    policies = _policies(manifests)
    queues = queue or list(STAGES)
    unknown = sorted(set(queues) - set(policies))
    if unknown:
        bad_input(f"no ScaledObject for {', '.join(unknown)} (--queue)")
    stop_on_signals()
    metrics_dir = share_metrics_directory(settings().home)
    with Supervisor(settings(), metrics_dir) as supervisor:
        broker = supervisor.connect(connected_broker(start=True))
        supervisor.start_pools(queues, policies, 0, shared=True)
        interval = supervisor.autoscaler.interval
        typer.echo(
            "Autoscaling "
            + ", ".join(f"{q} ({policies[q].min_replicas}..{policies[q].max_replicas})" for q in queues)
            + " replicas in all, shared with other machines autoscaling them,"
            + f" every {interval:g} s on {broker.safe_url}; workers' metrics in {metrics_dir}; Ctrl-C stops."
        )
        from pipeline.observability import forget_dead_processes

        wait_until_stopped(lambda: forget_dead_processes(metrics_dir), every=interval)


def scheduler(
    port: int = typer.Option(None, help="Port of this process's /metrics (0: none) [default: 9465]."),
) -> None:
    """Run the ingest of events and the scheduler of monitors, without workers (one per deployment is enough).

    Several may run: events are taken from a shared consumer and each monitor's slot has a message id.
    """
    from pipeline.supervisor import Supervisor, stop_on_signals, wait_until_stopped

    stop_on_signals()
    port = _port(9465) if port is None else port
    with Supervisor(settings(), metrics_dir="") as supervisor:
        broker = supervisor.connect(connected_broker(start=True))
        if port and supervisor.serve_metrics([], port, this_process=True) is None:
            fail(f"cannot serve metrics on port {port}; set PIPELINE_METRICS_PORT")
        supervisor.start_ingest()
        supervisor.start_scheduler()
        typer.echo(f"Ingesting {broker.prefix}.events.* and scheduling monitors; Ctrl-C stops.")
        wait_until_stopped()


def exporter(
    port: int = typer.Option(None, help="Port of /metrics [default: 9464]."),
) -> None:
    """Serve each queue's lag and dead letters (and, with PROMETHEUS_MULTIPROC_DIR, this machine's workers' metrics)."""
    from pipeline.names import STAGES
    from pipeline.supervisor import Supervisor, stop_on_signals, wait_until_stopped

    stop_on_signals()
    port = _port(9464) if port is None else port
    # prometheus-client's own variable: the directory this machine's workers write their metrics to
    with Supervisor(settings(), metrics_dir=os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")) as supervisor:
        supervisor.connect(connected_broker(start=True))
        server = supervisor.serve_metrics(list(STAGES), port)
        if server is None:
            fail(f"cannot serve metrics on port {port}; set PIPELINE_METRICS_PORT")
        typer.echo(f"Metrics at http://127.0.0.1:{port}/metrics")
        wait_until_stopped()


def _failure_line(failed: Any) -> str:
    """``fetch: 3 checks failed, the last (monitor:4): <reason>; see ...``: each is retried if it can pass."""
    checks = "1 check" if failed.count == 1 else f"{failed.count} checks"
    where = "see `pipeline monitor show ID` and `pipeline dlq list`"
    which = f" ({failed.source})" if failed.source else ""
    return time.strftime("%H:%M:%S ") + f"{failed.stage}: {checks} failed, the last{which}: {failed.latest}; {where}"


def _flow_order(queues: set[str]) -> list[str]:
    """The stages as work flows through them, then any other queue of yours, by name."""
    from pipeline.names import STAGES

    return [q for q in STAGES if q in queues] + sorted(queues - set(STAGES))


def _policies(manifests: Path | None) -> dict[str, Any]:
    """Each queue's scaling policy: the built-in table, or the manifests given (a clear error when unreadable)."""
    import yaml

    from pipeline.autoscale import load_policies, stage_policies

    if manifests is None:
        return stage_policies()
    try:
        return load_policies(manifests)
    except (OSError, ValueError, yaml.YAMLError) as e:
        bad_input(f"{e} (--manifests)")


def _actors_broker() -> Any:
    """The broker the actors are declared on (importing them connects it); one line when NATS is away."""
    from dramatiq.errors import ConnectionFailed

    import actors

    try:
        actors.broker.js  # noqa: B018 - connect now: an outage is one line before the banner
    except ConnectionFailed as e:
        fail(str(e))
    return actors.broker


def _port(default: int) -> int:
    """``PIPELINE_METRICS_PORT``, else the command's own default."""
    port = settings().metrics.port
    return default if port is None else port


def _keep_to_the_demo() -> None:
    """The demo keeps to itself (its NATS store, database and monitors never meet a plain `up`'s) under
    ``<home>/demo``, and its site is on 127.0.0.1, which the fetcher (and the workers it starts) may reach."""
    from pipeline.settings import configure

    current = settings()
    fetch = current.fetch.model_copy(update={"allow_hosts": (*current.fetch.allow_hosts, "127.0.0.1")})
    configure(current.model_copy(update={"home": current.home / "demo", "fetch": fetch}))


def _show_alert(show_line: Callable[[str], None]) -> Any:
    """Alerts to the demo's inbox, shown as they arrive, their signature checked."""
    from pipeline import webhooks
    from pipeline.runtime import webhook_secret

    secret = webhook_secret(settings())

    def show(headers: dict[str, str], body: bytes) -> None:
        try:
            webhooks.verify(secret, headers, body)
            signed = "signature ok"
        except webhooks.WebhookVerificationError as e:
            signed = f"BAD SIGNATURE: {e}"
        data = json.loads(body)["data"]
        show_line(f"ALERT [{data['severity']}] {data['summary']}  <- {data['url']}  ({signed})")

    return show
