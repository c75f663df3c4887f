"""Monitors by the hundred thousand: importing them, and scheduling them all due at once.

    python bench/monitors.py                     # 100,000 monitors, SQLite (and PostgreSQL if reachable)
    python bench/monitors.py --monitors 20000 --adds 10

For each database: ``pipeline monitor import`` of a CSV of N monitors (the
command as users run it, one process), against N times what one
``pipeline monitor add`` costs (measured over ``--adds`` of them, each a
process start, which is how monitors were added one at a time); then one
scheduler pass publishing every one of the N monitors, all due, to a fresh
``nats-server`` with acknowledged publishes.  Goals: an import in at most
30 s, a pass in at most 10 s.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.nats_server import NatsServer, reachable

PIPELINE = [sys.executable, "-m", "pipeline.cli"]


def write_csv(path: Path, count: int) -> None:
    with open(path, "w") as f:
        f.write("url,name,selector,rule,every,notify\n")
        for i in range(count):
            f.write(f"https://shop{i % 500}.example/p/{i},item {i},.price,price < {i % 300 + 1},600,"
                    "https://hooks.example.com/alerts\n")  # fmt: skip


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def schedule_all(database_url: str, nats_url: str, expected: int) -> float:
    """One scheduler pass over ``expected`` due monitors; seconds it took (all events acknowledged)."""
    from pipeline.bodies import BodyStore
    from pipeline.broker import JetStreamBroker
    from pipeline.db import make_engine
    from pipeline.fetcher import Fetcher
    from pipeline.ingest import Ingest
    from pipeline.names import events_stream
    from pipeline.scheduler import Scheduler
    from pipeline.stages import Context

    broker = JetStreamBroker(nats_url, prefix="bench" + uuid.uuid4().hex[:6])
    engine = make_engine(database_url)
    ctx = Context(engine, BodyStore(broker), Fetcher(), "whsec_" + "A" * 32)
    Ingest(broker, ctx).declare()
    started = time.perf_counter()
    published = Scheduler(broker, ctx).run_once()
    seconds = time.perf_counter() - started
    stored = broker.run(broker.js.stream_info(events_stream(broker.prefix))).state.messages
    assert published == expected == stored, (published, expected, stored)
    broker.close()
    engine.dispose()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--monitors", type=int, default=100_000)
    parser.add_argument("--adds", type=int, default=20, help="`monitor add` runs timed for the one-at-a-time rate")
    args = parser.parse_args()

    databases: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp, NatsServer(Path(tmp) / "nats") as server:
        databases.append(("SQLite", f"sqlite:///{tmp}/bench.db"))
        if reachable(5432):
            schema = "bench_" + uuid.uuid4().hex[:8]
            user = os.environ.get("USER") or "postgres"
            admin = f"postgresql://{user}@127.0.0.1:5432/test"
            subprocess.run(["psql", admin, "-qc", f"create schema {schema}"], check=True)
            databases.append(("PostgreSQL", f"{admin}?options=-csearch_path%3D{schema}"))
        csv = Path(tmp) / "monitors.csv"
        write_csv(csv, args.monitors)
        rows = []
        for name, url in databases:
            env = {**os.environ, "PIPELINE_DATABASE_URL": url, "PIPELINE_HOME": str(Path(tmp) / "home")}
            one = (
                sum(
                    timed([*PIPELINE, "monitor", "add", f"https://one.example/{i}", "--every", "600"], env)
                    for i in range(args.adds)
                )
                / args.adds
            )
            imported = timed([*PIPELINE, "monitor", "import", str(csv)], env)
            scheduled = schedule_all(url, server.url, args.monitors + args.adds)
            rows.append((name, one, imported, scheduled))
            if name == "PostgreSQL":
                subprocess.run(
                    [
                        "psql",
                        admin,
                        "-qc",
                        "set client_min_messages = warning",
                        "-c",
                        f"drop schema {url.rsplit('%3D', 1)[1]} cascade",
                    ],
                    check=True,
                )
    n = args.monitors
    print(f"\n{n:,} monitors, {os.cpu_count()} cores\n")
    print(f"| database | `monitor add` x {n:,} (extrapolated) | `monitor import` | speed-up | "
          f"scheduler pass, all due | goals (import 30 s, pass 10 s) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---|")
    for name, one, imported, scheduled in rows:
        met = "met" if imported <= 30 and scheduled <= 10 else "MISSED"
        print(f"| {name} | {one * n:,.0f} s ({one:.2f} s each) | {imported:.1f} s | {one * n / imported:,.0f}x | "
              f"{scheduled:.1f} s ({(n + args.adds) / scheduled:,.0f} events/s) | {met} |")  # fmt: skip


if __name__ == "__main__":
    main()
