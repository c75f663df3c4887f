"""The ``pipeline`` command."""

from __future__ import annotations

import functools
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
import yaml

from pipeline import redact
from pipeline.nats_server import DEFAULT_HOME, embedded_url

redact.install()

app = typer.Typer(help="An AI monitoring pipeline on Dramatiq and NATS JetStream.", no_args_is_help=True)


def _nats_url() -> str:
    """``PIPELINE_NATS_URL``, or the embedded server (started if it is not running)."""
    url = os.environ.get("PIPELINE_NATS_URL") or embedded_url(DEFAULT_HOME)
    os.environ["PIPELINE_NATS_URL"] = url  # worker processes and `actors` connect to the same server
    return url


def _load_broker():
    import actors

    return actors.broker


def _recent_checks(seconds: float) -> tuple[dict[str, int], dict[str, int]]:
    """Per stage: checks finished, and how many failed, in the last ``seconds``."""
    from datetime import UTC, datetime, timedelta

    from sqlmodel import Session, func, select

    from pipeline.models import Check

    since = datetime.now(UTC) - timedelta(seconds=seconds)
    with Session(_engine()) as session:
        rows = session.exec(
            select(Check.stage, Check.outcome, func.count())
            .where(Check.started_at >= since)
            .group_by(Check.stage, Check.outcome)
        ).all()
    done: dict[str, int] = {}
    errors: dict[str, int] = {}
    for stage, outcome, count in rows:
        done[stage] = done.get(stage, 0) + count
        if outcome == "error":
            errors[stage] = errors.get(stage, 0) + count
    return done, errors


def _start_demo():
    """The demo site, its monitors, and alerts printed as they arrive (signature checked)."""
    from pipeline import webhooks
    from pipeline.demo import DemoSite, install_monitors
    from pipeline.runtime import webhook_secret

    allowed = os.environ.get("PIPELINE_FETCH_ALLOW_HOSTS", "")
    os.environ["PIPELINE_FETCH_ALLOW_HOSTS"] = ",".join(filter(None, [allowed, "127.0.0.1"]))
    secret = webhook_secret()

    def show(headers: dict[str, str], body: bytes) -> None:
        try:
            webhooks.verify(secret, headers, body)
            signed = "signature ok"
        except webhooks.WebhookVerificationError as e:
            signed = f"BAD SIGNATURE: {e}"
        data = json.loads(body)["data"]
        typer.echo(f"ALERT [{data['severity']}] {data['summary']}  <- {data['url']}  ({signed})")

    site = DemoSite(show)
    site.start()
    install_monitors(_engine(), site)
    typer.echo(f"Demo site at {site.url} (/kettle, /status, /changelog): pages change every 20 s")
    return site


def _start_scheduler(broker):
    """Due monitors become events, in a thread of this process."""
    from pipeline.runtime import context
    from pipeline.scheduler import Scheduler

    scheduler = Scheduler(broker, context(broker))
    scheduler.start()
    return scheduler


def _start_ingest(broker):
    """Events from NATS subjects into the stages, in a thread of this process."""
    from pipeline.ingest import Ingest
    from pipeline.runtime import context

    ingest = Ingest(broker, context(broker))
    ingest.declare()  # before anyone publishes: core NATS drops what no stream captures
    ingest.start()
    return ingest


MANIFESTS_HELP = "Directory of the KEDA manifests that set each pool's policy [default: autoscale/keda/base]."


@app.command()
def up(
    replicas: int = typer.Option(0, min=0, help="Replicas per queue, fixed (0: each pool autoscaled on its lag)."),
    manifests: Path = typer.Option(None, help=MANIFESTS_HELP),
    interval: float = typer.Option(2.0, help="Seconds between status lines."),
    duration: float = typer.Option(0, help="Stop after this many seconds (0: run until Ctrl-C)."),
    demo: bool = typer.Option(False, "--demo", help="Also serve a local site whose pages change, with monitors on it."),
) -> None:
    """Run the pipeline on this machine: NATS, a worker pool per queue sized on its lag, metrics, a live status."""
    policies = _policies(manifests, required=not replicas)
    metrics_dir = _share_metrics_directory()  # before anything imports prometheus-client
    from pipeline import exporter
    from pipeline.observability import forget_dead_processes

    _interrupt_on_sigterm()  # `kill`, `docker stop`: the same graceful stop as Ctrl-C
    site = _start_demo() if demo else None
    _nats_url()
    broker = _load_broker()
    queues = sorted(broker.get_declared_queues())
    typer.echo(f"NATS {broker.safe_url}; queues: {', '.join(queues) or '-'}")
    port = int(os.environ.get("PIPELINE_METRICS_PORT", exporter.DEFAULT_PORT))
    metrics_server = (
        _serve_metrics(broker, queues, port, required=False, multiprocess_dir=metrics_dir) if port else None
    )
    pools, autoscaler, ingest, scheduler = {}, None, None, None
    try:
        pools, autoscaler = _start_pools(broker, queues, policies, replicas)
        ingest = _start_ingest(broker)
        scheduler = _start_scheduler(broker)
        typer.echo(f"Publish events to {broker.prefix}.events.check | .monitor | .content (JSON; see docs/schemas/)")
        started = time.monotonic()
        while not duration or time.monotonic() - started < duration:
            lag = broker.lag()
            done, errors = _recent_checks(interval)
            status = "  ".join(
                f"{pool.queue}: lag {lag.get(pool.queue, 0)} done {done.get(pool.queue, 0)}"
                f"{' errors ' + str(errors[pool.queue]) if errors.get(pool.queue) else ''}"
                f" replicas {pool.size}{f' ({pool.draining} draining)' if pool.draining else ''}"
                for pool in pools.values()
            )
            typer.echo(time.strftime("%H:%M:%S ") + (status or "no queues declared in actors/"))
            forget_dead_processes(metrics_dir)
            time.sleep(interval)
    except KeyboardInterrupt:
        typer.echo("Stopping: workers finish or return their messages...")
    finally:
        if site is not None:
            site.stop()
        if scheduler is not None:
            scheduler.stop()
        if ingest is not None:
            ingest.stop()
        _stop_pools(pools, autoscaler)
        if metrics_server is not None:
            metrics_server.shutdown()
        broker.close()


@app.command()
def autoscale(
    queue: list[str] = typer.Option(None, help="Only this queue (repeat for several) [default: every stage]."),
    manifests: Path = typer.Option(None, help=MANIFESTS_HELP),
) -> None:
    """Run worker pools on this machine, each resized from its queue's lag by the KEDA manifests' policy.

    Only workers: run `pipeline scheduler` once beside them, and `pipeline exporter` on this machine
    (with PROMETHEUS_MULTIPROC_DIR set to the directory printed) to serve their metrics.
    """
    from pipeline.names import STAGES

    policies = _policies(manifests)
    queues = queue or list(STAGES)
    unknown = sorted(set(queues) - set(policies))
    if unknown:
        raise typer.BadParameter(f"no ScaledObject for {', '.join(unknown)}", param_hint="--queue")
    metrics_dir = _share_metrics_directory()
    from pipeline.observability import forget_dead_processes

    broker = _connected_broker()
    pools, autoscaler = _start_pools(broker, queues, policies, 0)
    typer.echo(
        "Autoscaling "
        + ", ".join(f"{q} ({policies[q].min_replicas}..{policies[q].max_replicas})" for q in queues)
        + f" every {autoscaler.interval:g} s on {broker.safe_url}; workers' metrics in {metrics_dir}; Ctrl-C stops."
    )
    try:
        _wait_until_stopped(lambda: forget_dead_processes(metrics_dir), every=autoscaler.interval)
    finally:
        _stop_pools(pools, autoscaler)
        broker.close()


def _policies(manifests: Path | None, *, required: bool = True):
    """Each queue's scaling policy, from the KEDA manifests; a clear error when they are needed and not there."""
    from pipeline.autoscale import default_manifests, load_policies

    try:
        return load_policies(manifests or default_manifests())
    except (OSError, ValueError, yaml.YAMLError) as e:
        if required or manifests:
            raise typer.BadParameter(str(e), param_hint="--manifests") from None
        return {}  # fixed sizes without the manifests: one process of 8 threads per replica


def _start_pools(broker, queues: list[str], policies, replicas: int):
    """A pool per queue, each replica as its Deployment runs it; autoscaled unless ``replicas`` fixes the size."""
    from pipeline.autoscale import Autoscaler, Policy
    from pipeline.workers import WorkerPool

    unlisted = {"min_replicas": 1, "max_replicas": 1, "processes": 1}  # a queue of yours without a ScaledObject
    policies = {q: policies.get(q) or Policy(q, **unlisted) for q in queues}
    pools = {}
    for queue, policy in policies.items():
        pools[queue] = WorkerPool(
            queue,
            env=dict(os.environ),
            log_dir=Path(DEFAULT_HOME) / "logs",
            processes=policy.processes,
            threads=policy.threads,
            shutdown_timeout=policy.shutdown_timeout,
        )
    if replicas:
        for pool in pools.values():
            pool.resize(replicas)
        return pools, None
    autoscaler = Autoscaler(broker.lag, pools, policies)
    autoscaler.start()
    return pools, autoscaler


def _stop_pools(pools, autoscaler) -> None:
    if autoscaler is not None:
        autoscaler.stop()
    for pool in pools.values():
        pool.resize(0)  # every replica drains at once, rather than one pool after another
    for pool in pools.values():
        pool.stop()


def _share_metrics_directory() -> str:
    """Every process `up` runs writes its metrics to one directory, emptied first, which the exporter serves."""
    directory = Path(os.environ.get("dramatiq_prom_db") or (DEFAULT_HOME / "metrics").resolve())
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):  # counters of a previous run are not this run's
        stale.unlink()
    os.environ["dramatiq_prom_db"] = os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    return str(directory)


def _serve_metrics(broker, queues: list[str], port: int, *, required: bool = True, **sources: Any):
    """``/metrics`` on ``port``; a busy port ends a command whose job it is, and only warns in ``up``."""
    from pipeline import exporter

    try:
        server = exporter.serve(broker, queues, port, **sources)
    except OSError as e:
        message = f"cannot serve metrics on port {port} ({e.strerror}); set PIPELINE_METRICS_PORT"
        typer.echo(f"{'error' if required else 'warning'}: {message}", err=True)
        if required:
            raise typer.Exit(1) from None
        return None
    typer.echo(f"Metrics at http://127.0.0.1:{port}/metrics")
    return server


def _wait_until_stopped(tick: Callable[[], None] | None = None, *, every: float = 5.0) -> None:
    """Block until Ctrl-C or SIGTERM (`docker stop`, a pod's deletion), calling ``tick`` every ``every`` seconds.

    The caller then shuts down in order.
    """
    import signal
    import threading

    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    while not stopped.wait(every):
        if tick is not None:
            tick()


def _interrupt_on_sigterm() -> None:
    """SIGTERM raises KeyboardInterrupt in the main thread, so it stops `up` as gracefully as Ctrl-C."""
    import signal

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


@app.command()
def scheduler(
    port: int = typer.Option(9465, envvar="PIPELINE_METRICS_PORT", help="Port of this process's /metrics (0: none)."),
) -> None:
    """Run the ingest of events and the scheduler of monitors, without workers (one per deployment is enough).

    Several may run: events are taken from a shared consumer and each monitor's slot has a message id.
    """
    broker = _connected_broker()
    server = _serve_metrics(broker, [], port, this_process=True) if port else None
    ingest = _start_ingest(broker)
    schedule = _start_scheduler(broker)
    typer.echo(f"Ingesting {broker.prefix}.events.* and scheduling monitors; Ctrl-C stops.")
    try:
        _wait_until_stopped()
    finally:
        schedule.stop()
        ingest.stop()
        if server is not None:
            server.shutdown()
        broker.close()


@app.command()
def exporter(
    port: int = typer.Option(9464, envvar="PIPELINE_METRICS_PORT", help="Port of /metrics."),
) -> None:
    """Serve each queue's lag and dead letters (and, with PROMETHEUS_MULTIPROC_DIR, this machine's workers' metrics)."""
    from pipeline.names import STAGES

    broker = _connected_broker()
    server = _serve_metrics(broker, list(STAGES), port, multiprocess_dir=os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    try:
        _wait_until_stopped()
    finally:
        server.shutdown()
        broker.close()


@app.command()
def schemas(directory: Path = typer.Option(Path("docs/schemas"), help="Where to write them.")) -> None:
    """Write the JSON Schema of each event kind (the producer contract)."""
    from pipeline.events import json_schemas

    directory.mkdir(parents=True, exist_ok=True)
    for kind, schema in json_schemas().items():
        path = directory / f"{kind}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        typer.echo(f"wrote {path}")


@app.command()
def lag(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Print each queue's lag (num_pending + num_ack_pending): the figure KEDA scales on."""
    broker = _connected_broker()
    figures = broker.lag()
    broker.close()
    if as_json:
        typer.echo(json.dumps(figures))
    else:
        for queue, value in figures.items():
            typer.echo(f"{queue}\t{value}")


monitor_app = typer.Typer(help="Add, list, pause, resume and remove monitors.", no_args_is_help=True)
app.add_typer(monitor_app, name="monitor")


def _engine():
    """The database, migrated: once per URL and process (`up` asks every few seconds)."""
    from pipeline.db import database_url

    return _migrated_engine(database_url())


@functools.cache
def _migrated_engine(url: str):
    from pipeline.db import make_engine, migrate

    engine = make_engine(url)
    migrate(engine)
    return engine


@monitor_app.command("add")
def monitor_add(
    url: str = typer.Argument(..., help="http(s) URL to watch."),
    name: str = typer.Option("", help="A name to show (default: the URL)."),
    selector: str = typer.Option(
        None, help="The part to watch: CSS (.price), XPath (//p, xpath:...) or JSONPath ($.item.price)."
    ),
    rule: str = typer.Option(None, help='When a change matters: changed | "phrase" | /regex/i | price < 100.'),
    question: str = typer.Option(None, help="A question for the LLM analyser about each change that passes the rule."),
    every: int = typer.Option(3600, help="Seconds between checks (at least 30)."),
    notify: list[str] = typer.Option([], help="Webhook URL to alert (repeatable)."),
) -> None:
    """Watch a URL; prints the new monitor's id."""
    from pydantic import ValidationError
    from sqlmodel import Session

    from pipeline.events import CheckEvent
    from pipeline.models import Monitor

    try:  # the same checks as an event's: URL, selector and rule syntax, targets
        CheckEvent(url=url, selector=selector, rule=rule, question=question, notify=notify)
    except ValidationError as e:
        raise typer.BadParameter(_first_error(e)) from None
    if every < 30:
        raise typer.BadParameter("--every must be at least 30 seconds")
    with Session(_engine()) as session:
        monitor = Monitor(
            name=name or redact.display_url(url),
            url=url,
            selector=selector,
            rule=rule,
            question=question,
            interval_seconds=every,
            notify=list(notify),
        )
        session.add(monitor)
        session.commit()
        typer.echo(monitor.id)


def _first_error(error) -> str:
    item = error.errors()[0]
    return f"{'.'.join(str(p) for p in item['loc'])}: {item['msg'].removeprefix('Value error, ')}"


@monitor_app.command("show")
def monitor_show(monitor_id: int) -> None:
    """One monitor in full, with its latest checks and findings."""
    from sqlmodel import Session, select

    from pipeline.jobs import monitor_source
    from pipeline.models import Check, Finding, Monitor

    with Session(_engine()) as session:
        monitor = session.get(Monitor, monitor_id)
        if monitor is None:
            typer.echo(f"no monitor {monitor_id}", err=True)
            raise typer.Exit(1)
        source = monitor_source(monitor_id)
        checks = session.exec(select(Check).where(Check.source == source).order_by(Check.id.desc()).limit(8)).all()  # type: ignore[union-attr]
        findings = session.exec(
            select(Finding).where(Finding.source == source).order_by(Finding.id.desc()).limit(5)
        ).all()  # type: ignore[union-attr]
        data = monitor.model_dump(mode="json")
    data["url"] = redact.display_url(data["url"]) if data.get("url") else None
    data["notify"] = [redact.redact_url(target) for target in data["notify"]]
    for key, value in data.items():
        typer.echo(f"{key}: {value}")
    typer.echo("recent checks:")
    for c in checks:
        typer.echo(f"  {c.started_at.isoformat(timespec='seconds')} {c.stage} {c.outcome} {c.detail[:80]}")
    typer.echo("recent findings:")
    for f in findings:
        verdict = "relevant" if f.relevant else "-"
        typer.echo(f"  {f.created_at.isoformat(timespec='seconds')} {verdict} [{f.analyser}] {f.summary}")


@monitor_app.command("list")
def monitor_list(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Every monitor, with its state and next check."""
    from sqlmodel import Session, select

    from pipeline.models import Monitor

    with Session(_engine()) as session:
        monitors = session.exec(select(Monitor).order_by(Monitor.id)).all()
    rows = [
        {
            "id": m.id,
            "name": m.name,
            "url": redact.display_url(m.url) if m.url else None,
            "rule": m.rule,
            "question": m.question,
            "every": m.interval_seconds,
            "paused": m.paused,
            "next_check_at": m.next_check_at.isoformat(timespec="seconds"),
        }
        for m in monitors
    ]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    for row in rows:
        state = "paused" if row["paused"] else f"next {row['next_check_at']}"
        typer.echo(f"{row['id']}\t{row['name']}\t{row['rule'] or 'changed'}\tevery {row['every']}s\t{state}")


def _set_paused(monitor_id: int, paused: bool | None) -> None:
    from sqlmodel import Session

    from pipeline.models import Monitor

    with Session(_engine()) as session:
        monitor = session.get(Monitor, monitor_id)
        if monitor is None:
            typer.echo(f"no monitor {monitor_id}", err=True)
            raise typer.Exit(1)
        if paused is None:
            session.delete(monitor)
        else:
            monitor.paused = paused
            session.add(monitor)
        session.commit()


@monitor_app.command("pause")
def monitor_pause(monitor_id: int) -> None:
    """Stop checking a monitor (it keeps its history)."""
    _set_paused(monitor_id, True)


@monitor_app.command("resume")
def monitor_resume(monitor_id: int) -> None:
    """Check a paused monitor again."""
    _set_paused(monitor_id, False)


@monitor_app.command("rm")
def monitor_rm(monitor_id: int) -> None:
    """Remove a monitor."""
    _set_paused(monitor_id, None)


dlq_app = typer.Typer(help="Dead letters: list, replay, purge.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")


def _connected_broker():
    """A broker for inspection: the stage queues declared, no actors imported."""
    from pipeline.broker import JetStreamBroker
    from pipeline.names import STAGES

    broker = JetStreamBroker(_nats_url(), prefix=os.environ.get("PIPELINE_PREFIX", "pipeline"))
    for stage in STAGES:
        broker.declare_queue(stage)
    return broker


@dlq_app.command("list")
def dlq_list(
    queue: str = typer.Option(None, help="Only this queue (events: invalid events)."),
    limit: int = typer.Option(100, min=1, help="Show at most this many."),
    since: str = typer.Option(
        None, help="Only after this: a sequence number (the last one shown, to page on), a time, or an age (30m, 2h)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (a list; the count goes to stderr)."),
) -> None:
    """Dead letters, oldest first, with why they failed; says how many there are in all."""
    from pipeline.deadletters import count_dead, list_dead

    after, since_time = _since(since)
    broker = _connected_broker()
    letters = list_dead(broker, queue, limit, after=after, since=since_time)
    total = count_dead(broker, queue)
    broker.close()
    if as_json:
        keys = ("sequence", "queue", "subject", "message_id", "reason", "failed_at")
        typer.echo(json.dumps([{k: getattr(letter, k) for k in keys} for letter in letters]))
    else:
        if letters:
            typer.echo("SEQUENCE\tFAILED AT\tQUEUE\tREASON")
        for letter in letters:
            typer.echo(f"{letter.sequence}\t{letter.failed_at}\t{letter.queue}\t{letter.reason}")
    shown = f"{len(letters)} of {total} dead letter(s)" + (f" of {queue}" if queue else "")
    more = f"; next page: --since {letters[-1].sequence}" if len(letters) == limit else ""
    typer.echo(f"{shown}{more}", err=True)


def _since(value: str | None) -> tuple[int, Any]:
    """``--since``: (sequence to page after, earliest failure time); a bad value is bad input."""
    from datetime import UTC, datetime, timedelta

    if value is None:
        return 0, None
    value = value.strip()
    if value.isdigit():
        return int(value), None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if value[:-1].isdigit() and value[-1:] in units:
        return 0, datetime.now(UTC) - timedelta(seconds=int(value[:-1]) * units[value[-1]])
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"--since takes a sequence number, a time (2026-11-30T12:00) or an age (30m, 2h, 1d), not {value!r}"
        ) from None
    return 0, when if when.tzinfo else when.replace(tzinfo=UTC)


@dlq_app.command("replay")
def dlq_replay(
    sequences: list[int] = typer.Argument(None, help="Dead letters to replay (default: all, or all of --queue)."),
    queue: str = typer.Option(None, help="Only this queue."),
) -> None:
    """Publish dead letters again where they came from, with their retries reset."""
    from pipeline.deadletters import list_dead, replay

    broker = _connected_broker()
    letters = [x for x in list_dead(broker, queue, limit=100_000) if not sequences or x.sequence in sequences]
    missing = set(sequences or ()) - {letter.sequence for letter in letters}
    for letter in letters:
        replay(broker, letter)
    broker.close()
    typer.echo(f"replayed {len(letters)}")
    if missing:
        typer.echo(f"no dead letter {', '.join(map(str, sorted(missing)))}", err=True)
        raise typer.Exit(1)


@dlq_app.command("purge")
def dlq_purge(
    queue: str = typer.Option(None, help="Only this queue."),
    yes: bool = typer.Option(False, "--yes", help="Do not ask."),
) -> None:
    """Delete dead letters for good."""
    from pipeline.deadletters import purge

    if not yes:
        typer.confirm(f"Delete the dead letters of {queue or 'every queue'}?", abort=True)
    broker = _connected_broker()
    purge(broker, queue)
    broker.close()


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Each queue's lag and dead letters, and the monitors' state."""
    from sqlmodel import Session, func, select

    from pipeline.models import Monitor

    broker = _connected_broker()
    queues = {q: {"lag": lag, "dead": broker.dead_letter_count(q)} for q, lag in broker.lag().items()}
    queues["events"] = {"lag": 0, "dead": broker.dead_letter_count("events")}
    broker.close()
    with Session(_engine()) as session:
        total = session.exec(select(func.count()).select_from(Monitor)).one()
        paused = session.exec(select(func.count()).select_from(Monitor).where(Monitor.paused == True)).one()  # noqa: E712
    report = {"queues": queues, "monitors": {"total": total, "paused": paused}, "llm": _llm_summary()}
    if as_json:
        typer.echo(json.dumps(report))
        return
    for queue, figures in queues.items():
        typer.echo(f"{queue}\tlag {figures['lag']}\tdead {figures['dead']}")
    typer.echo(f"monitors\t{total} ({paused} paused)")
    llm = report["llm"]
    if llm is None:
        typer.echo("llm\toff (no PIPELINE_OPENAI_API_KEYS): monitors are judged by their rules")
    else:
        quota = f"{llm['rpm']:g} requests and {llm['tpm']:g} tokens per {llm['quota_period']:g}s per key"
        typer.echo(f"llm\t{llm['model']} at {llm['endpoint']}, keys {', '.join(llm['keys'])}; {quota}")


def _llm_summary() -> dict[str, Any] | None:
    """The LLM settings as they may be shown: keys by label, the endpoint by host."""
    from pipeline.llm import LLMSettings

    settings = LLMSettings.from_env()
    if settings is None:
        return None
    endpoint = redact.redact_url(settings.base_url) if settings.base_url else "OpenAI"
    return {"model": settings.model, "endpoint": endpoint, "keys": [k.label for k in settings.keys],
            "rpm": settings.rpm, "tpm": settings.tpm, "quota_period": settings.quota_period}  # fmt: skip


@app.command()
def alerts(limit: int = typer.Option(20, help="How many, newest first.")) -> None:
    """Recent alerts and how their delivery went."""
    from sqlmodel import Session, select

    from pipeline.models import Alert, Finding

    with Session(_engine()) as session:
        rows = session.exec(
            select(Alert, Finding).join(Finding).order_by(Alert.created_at.desc()).limit(limit)  # type: ignore[attr-defined]
        ).all()
    for alert_row, finding in rows:
        when = alert_row.created_at.isoformat(timespec="seconds")
        typer.echo(f"{when}\t{alert_row.status}\t{finding.source}\t{finding.summary}\t{alert_row.target}")


#: C0 and C1 control characters but newline and tab: what a terminal would obey.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _ask_llm(question: str, change: Any) -> Any:
    from pipeline.llm import LLMRejectedError, LLMUnavailableError, SettingsError
    from pipeline.ratelimit import RateLimitedError
    from pipeline.runtime import llm_analyser

    broker = _connected_broker()
    try:
        analyser = llm_analyser(broker)
        if analyser is None:
            raise typer.BadParameter("--question needs an OpenAI key: set PIPELINE_OPENAI_API_KEYS (or OPENAI_API_KEY)")
        return analyser.judge(question, change)
    except SettingsError as e:
        raise typer.BadParameter(str(e)) from None
    except (LLMRejectedError, LLMUnavailableError, RateLimitedError) as e:
        typer.echo(f"error: the LLM could not answer: {e}", err=True)
        raise typer.Exit(1) from None
    finally:
        broker.close()


@app.command()
def check(
    url: str = typer.Argument(..., help="http(s) URL to check now."),
    selector: str = typer.Option(
        None, help="The part to watch: CSS (.price), XPath (//p, xpath:...) or JSONPath ($.item.price)."
    ),
    rule: str = typer.Option(None, help='When a change matters: changed | "phrase" | /regex/i | price < 100.'),
    question: str = typer.Option(None, help="Ask the LLM analyser too (needs PIPELINE_OPENAI_API_KEYS)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Fetch a URL now and show what a monitor would watch and what its rule (and the LLM) say; nothing is stored.

    Exit codes: 0 it matters, 3 it does not, 1 the page or the LLM could not be read, 2 bad input.
    The LLM call takes its slot in the same shared quota as the workers' calls.
    """
    from pydantic import ValidationError

    from pipeline.content import ExtractError, diff, extract
    from pipeline.events import CheckEvent
    from pipeline.fetcher import Fetcher, FetchError
    from pipeline.rules import parse_rule

    try:  # the same checks as an event's: a bad selector or rule is bad input (2), not a bad page (1)
        CheckEvent(url=url, selector=selector, rule=rule, question=question)
    except ValidationError as e:
        raise typer.BadParameter(_first_error(e)) from None
    parsed = parse_rule(rule)
    fetcher = Fetcher()
    try:
        result = fetcher.fetch(url)
        extracted = extract(result.body, result.content_type, selector)
    except (FetchError, ExtractError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    finally:
        fetcher.close()
    text = extracted.text
    change = diff(None, text)
    verdict = parsed.evaluate(change)
    if question and verdict.relevant:
        verdict = _ask_llm(question, change)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "text": text,
                    "kind": extracted.kind.value,
                    "encoding": extracted.encoding,
                    "note": extracted.note,
                    "relevant": verdict.relevant,
                    "summary": verdict.summary,
                    "evidence": list(verdict.evidence),
                    "status": result.status,
                }
            )
        )
    else:
        shown = text[:2000] + ("\n…" if len(text) > 2000 else "")
        typer.echo(_CONTROL.sub("\ufffd", shown))  # a page's escape sequences never reach the terminal
        if extracted.note:
            typer.echo(f"({extracted.note})")
        typer.echo(f"\n{'MATCHES' if verdict.relevant else 'no match'}: {verdict.summary}")
    raise typer.Exit(0 if verdict.relevant else 3)


if __name__ == "__main__":
    app()
