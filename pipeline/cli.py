"""The ``pipeline`` command."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import typer

from pipeline.nats_server import DEFAULT_HOME, embedded_url

app = typer.Typer(help="An AI monitoring pipeline on Dramatiq and NATS JetStream.", no_args_is_help=True)


def _nats_url() -> str:
    """``PIPELINE_NATS_URL``, or the embedded server (started if it is not running)."""
    url = os.environ.get("PIPELINE_NATS_URL") or embedded_url(DEFAULT_HOME)
    os.environ["PIPELINE_NATS_URL"] = url  # worker processes and `actors` connect to the same server
    return url


def _load_broker():
    import actors

    return actors.broker


def _start_ingest(broker):
    """Events from NATS subjects into the stages, in a thread of this process."""
    import threading

    from pipeline.ingest import Ingest
    from pipeline.runtime import context

    ingest = Ingest(broker, context(broker))
    ingest.declare()  # before anyone publishes: core NATS drops what no stream captures
    threading.Thread(target=ingest.run, name="ingest", daemon=True).start()
    return ingest


@app.command()
def up(
    threads: int = typer.Option(8, help="Worker threads per process."),
    processes: int = typer.Option(1, help="Worker processes per queue."),
    interval: float = typer.Option(2.0, help="Seconds between status lines."),
    duration: float = typer.Option(0, help="Stop after this many seconds (0: run until Ctrl-C)."),
) -> None:
    """Run the pipeline on this machine: NATS, one worker pool per queue, and a live status."""
    from pipeline.workers import WorkerPool

    _nats_url()
    broker = _load_broker()
    queues = sorted(broker.get_declared_queues())
    typer.echo(f"NATS {broker.safe_url}; queues: {', '.join(queues) or '-'}")
    pools = [WorkerPool(q, env=dict(os.environ), threads=threads, log_dir=Path(DEFAULT_HOME) / "logs") for q in queues]
    for pool in pools:
        pool.resize(processes)
    ingest = _start_ingest(broker)
    typer.echo(f"Publish events to {broker.prefix}.events.check | .monitor | .content (JSON; see docs/schemas/)")
    started = time.monotonic()
    try:
        while not duration or time.monotonic() - started < duration:
            lag = broker.lag()
            status = "  ".join(f"{pool.queue}: lag {lag.get(pool.queue, 0)} workers {pool.size}" for pool in pools)
            typer.echo(time.strftime("%H:%M:%S ") + (status or "no queues declared in actors/"))
            time.sleep(interval)
    except KeyboardInterrupt:
        typer.echo("Stopping: workers finish or return their messages...")
    finally:
        ingest.stop()
        for pool in pools:
            pool.stop()
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
    _nats_url()
    broker = _load_broker()
    figures = broker.lag()
    broker.close()
    if as_json:
        typer.echo(json.dumps(figures))
    else:
        for queue, value in figures.items():
            typer.echo(f"{queue}\t{value}")
