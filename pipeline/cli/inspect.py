"""``pipeline status``, ``lag``, ``alerts``, ``screenshot``: what a running pipeline is doing, and what it said."""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path
from typing import Any

import typer

from pipeline import redact
from pipeline.cli.common import JSON_OPTION, CommandError, connected_broker, echo_json, engine, settings, table


def status(as_json: bool = JSON_OPTION) -> None:
    """Each queue's lag and dead letters; where each stream and bucket is (replicas, leader); the monitors; the LLM."""
    from pipeline import queries
    from pipeline.names import EVENTS_QUEUE

    broker = connected_broker()
    try:
        queues = {q: {"lag": lag, "dead": broker.dead_letter_count(q)} for q, lag in broker.lag().items()}
        queues[EVENTS_QUEUE] = {"lag": 0, "dead": broker.dead_letter_count(EVENTS_QUEUE)}
        assets = broker.assets()
    finally:
        broker.close()
    total, paused = queries.monitor_counts(engine())
    llm = _llm_summary()
    if as_json:
        shown = [dataclasses.asdict(asset) for asset in assets]
        echo_json({"queues": queues, "assets": shown, "monitors": {"total": total, "paused": paused}, "llm": llm})
        return
    table(["QUEUE", "LAG", "DEAD LETTERS"], ([q, f["lag"], f["dead"]] for q, f in queues.items()))
    typer.echo()
    table(
        ["STREAM", "KIND", "REPLICAS", "CURRENT", "STORAGE", "LEADER"],
        ([a.name, a.kind, a.replicas, a.current, a.storage, a.leader or "none (election)"] for a in assets),
    )
    typer.echo(f"\nmonitors: {total} ({paused} paused)")
    if llm is None:
        typer.echo("llm: off (no PIPELINE_OPENAI_API_KEYS): monitors are judged by their rules")
    else:
        quota = f"{llm['rpm']:g} requests and {llm['tpm']:g} tokens per {llm['quota_period']:g}s per key"
        typer.echo(f"llm: {llm['model']} at {llm['endpoint']}, keys {', '.join(llm['keys'])}; {quota}")


def _llm_summary() -> dict[str, Any] | None:
    """The LLM settings as they may be shown: keys by label, the endpoint by host."""
    llm = settings().llm
    if not llm.enabled:
        return None
    endpoint = redact.redact_url(llm.base_url) if llm.base_url else "OpenAI"
    return {"model": llm.model, "endpoint": endpoint, "keys": [k.label for k in llm.keys],
            "rpm": llm.rpm, "tpm": llm.tpm, "quota_period": llm.quota_period}  # fmt: skip


def lag(as_json: bool = JSON_OPTION) -> None:
    """Each queue's lag (num_pending + num_ack_pending): the figure KEDA scales on."""
    broker = connected_broker()
    try:
        figures = broker.lag()
    finally:
        broker.close()
    if as_json:
        echo_json(figures)
    else:
        table(["QUEUE", "LAG"], figures.items())


def alerts(limit: int = typer.Option(20, min=1, help="How many, newest first."), as_json: bool = JSON_OPTION) -> None:
    """Recent alerts and how their delivery went."""
    from pipeline import queries

    rows = [
        {
            "at": alert.created_at.isoformat(timespec="seconds"),
            "status": alert.status,
            "source": finding.source,
            "summary": finding.summary,
            "target": alert.target,
        }
        for alert, finding in queries.recent_alerts(engine(), limit)
    ]
    if as_json:
        echo_json(rows)
    else:
        table(["AT", "STATUS", "SOURCE", "SUMMARY", "TARGET"], ([*row.values()] for row in rows))
        if not rows:
            typer.echo("no alerts yet", err=True)


def screenshot(
    key: str = typer.Argument(..., help="Its key, as an alert (data.screenshot) or `monitor show` names it."),
    output: Path | None = typer.Option(
        None,
        "--output",
        "-o",
        help="Where to write the PNG; `-` for stdout [default: ./screenshot-<key's first 12>.png].",
    ),
) -> None:
    """Save a rendered page's screenshot (PNG), kept a week after the check that took it."""
    from pipeline.bodies import SCREENSHOT_TTL, BodyStore

    key = key.strip().lower()  # hex is hex in either case (copied from a tool that prints it upper-case)
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", key):
        shown = key if len(key) <= 80 else key[:77] + "..."
        raise CommandError(f"{shown!r} is not a screenshot key (sha256:<64 hex digits>)", 2)
    broker = connected_broker()
    try:
        png = BodyStore.screenshots(broker).get(key)
    except KeyError:
        kept = f"{SCREENSHOT_TTL / 86400:g} days"
        raise CommandError(f"no screenshot {key}: never taken here, or older than {kept}", 1) from None
    except ValueError as e:
        raise CommandError(str(e), 1) from None
    finally:
        broker.close()
    if output is not None and str(output) == "-":
        sys.stdout.buffer.write(png)
        return
    path = output or Path(f"screenshot-{key[7:19]}.png")
    try:
        path.write_bytes(png)
    except OSError as e:  # a directory, a missing parent, no permission: the user's to mend
        raise CommandError(f"cannot write {path}: {e.strerror}", 2) from None
    typer.echo(f"wrote {path} ({len(png):,} bytes)")
