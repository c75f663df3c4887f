"""Pipeline benchmark: N monitors on local pages, through all four stages, end to end.

One run: a fresh nats-server and SQLite database, a local site with N pages
and a webhook inbox, one fixed worker pool per stage (``pipeline up`` runs
the same, autoscaled), the ingest and the scheduler.  Every monitor is due at once; the
clock runs from the scheduler's pass until the last webhook arrives.

    python bench/pipeline.py                  # 500 monitors, 1 process x 8 threads per stage
    python bench/pipeline.py --monitors 2000 --threads 16
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlmodel import Session, func, select

from pipeline.broker import JetStreamBroker
from pipeline.ingest import Ingest
from pipeline.models import Check, Monitor
from pipeline.names import STAGES
from pipeline.nats_server import NatsServer
from pipeline.scheduler import Scheduler
from pipeline.workers import WorkerPool


class LocalSite:
    """N product pages and an inbox that counts webhooks."""

    def __init__(self) -> None:
        self.received = 0
        self.lock = threading.Lock()
        site = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                n = self.path.rsplit("/", 1)[-1]
                body = f"<html><body><h1>Item {n}</h1><p class='price'>Price: {50 + int(n) % 40} EUR</p></body></html>"
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()
                with site.lock:
                    site.received += 1

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--monitors", type=int, default=500)
    parser.add_argument("--threads", type=int, default=8, help="worker threads per stage process")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as home, NatsServer(Path(home) / "nats") as server:
        os.environ.update(
            PIPELINE_NATS_URL=server.url,
            PIPELINE_PREFIX="bench",
            PIPELINE_DATABASE_URL=f"sqlite:///{home}/bench.db",
            PIPELINE_FETCH_ALLOW_HOSTS="127.0.0.1",
            PIPELINE_FETCH_DOMAIN_INTERVAL="0",  # every page is on one local host: politeness off
        )
        from pipeline.runtime import context

        site = LocalSite()
        broker = JetStreamBroker(server.url, prefix="bench")
        for stage in STAGES:
            broker.declare_queue(stage)
        ctx = context(broker)
        with Session(ctx.engine) as session:
            session.add_all(
                Monitor(name=f"m{n}", url=f"{site.url}/item/{n}", selector=".price", rule="price < 100",
                        interval_seconds=86400, notify=[f"{site.url}/inbox"])
                for n in range(args.monitors)
            )  # fmt: skip
            session.commit()

        pools = [WorkerPool(s, env=dict(os.environ), threads=args.threads, log_dir=Path(home) / "logs") for s in STAGES]
        for pool in pools:
            pool.resize(1)
        ingest = Ingest(broker, ctx)
        ingest.declare()
        ingest.start()
        time.sleep(3)  # let the worker processes boot

        started = time.monotonic()
        Scheduler(broker, ctx).run_once()
        scheduled = time.monotonic() - started
        while site.received < args.monitors and time.monotonic() - started < args.timeout:
            time.sleep(0.05)
        elapsed = time.monotonic() - started

        with Session(ctx.engine) as session:
            per_stage = {
                stage: session.exec(select(func.avg(Check.seconds)).where(Check.stage == stage)).one() or 0.0
                for stage in STAGES
            }
        ingest.stop()
        for pool in pools:
            pool.stop()
        broker.close()

    print(f"\n{args.monitors} monitors, 1 process x {args.threads} threads per stage, {os.cpu_count()} cores\n")
    print("| measure | value |")
    print("|---|---:|")
    print(f"| webhooks delivered | {site.received} of {args.monitors} |")
    print(f"| end to end, scheduler pass to last webhook | {elapsed:.2f} s |")
    print(f"| checks per second, end to end | {site.received / elapsed:.0f} |")
    print(f"| scheduler pass (publish {args.monitors} events) | {scheduled * 1000:.0f} ms |")
    for stage, seconds in per_stage.items():
        print(f"| mean time in {stage} | {seconds * 1000:.1f} ms |")


if __name__ == "__main__":
    main()
