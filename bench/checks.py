"""Checks per second and CPU per check: `pipeline up` against changedetection.io on the same pages.

One run, one machine: a local site serves N product pages of about 6 KB; each
system checks all of them three times:

1. *first check*: every page is new (its price is 100 EUR or more, so the
   rule ``price < 100`` does not fire: no alert);
2. *recheck, all changed*: every price has dropped under 100: one signed
   webhook per page from the pipeline (changedetection.io, as the peer runs it,
   sends no notification);
3. *recheck, none changed*: the same pages again, the common case at scale.

changedetection.io runs first with its default 10 fetch workers (its own venv:
``bench/peers/changedetection.py``), then ``pipeline up`` as shipped: the
embedded nats-server, SQLite and the autoscaled pools, with the checks
published as events (``pipeline.events.check``) by a NATS client, as any
producer would.  A round's clock runs from the first event published (or
changedetection.io's recheck request) to the last check finished; CPU is
every process of the system, nats-server and workers included.

    python bench/checks.py                      # 1000 pages, both systems
    python bench/checks.py --runs 3             # three runs of each, alternating: medians and ranges
    python bench/checks.py --pages 200 --only pipeline
    python bench/checks.py --slow               # 1000 pages that each answer after 1 s: first check only
    python bench/checks.py --replicas 1         # every pool fixed at one replica instead of autoscaled

Politeness (``PIPELINE_FETCH_DOMAIN_INTERVAL``) is off: every page is on one
local host, and changedetection.io has no per-host limit either.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nats
from pages import Pages
from process_tree import cpu_by_kind, cpu_seconds, peak_rss_mb

from pipeline.nats_server import running_url

ROUNDS = ("first check", "recheck, all changed", "recheck, none changed")
#: Where a check ends in each round, stage and outcome (pipeline.stages): an unchanged page ends at fetch
#: when its bytes are the same, at scrape when only parts outside the selector changed.
ENDS = {
    "first check": [("analyse", "irrelevant")],
    "recheck, all changed": [("alert", "sent")],
    "recheck, none changed": [("fetch", "unchanged"), ("scrape", "unchanged")],
}


@dataclass(frozen=True)
class Round:
    name: str
    checks: int
    seconds: float
    cpu_seconds: float
    peak_rss_mb: float = 0.0

    @property
    def per_second(self) -> float:
        return self.checks / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms(self) -> float:
        return self.cpu_seconds * 1000 / self.checks if self.checks else 0.0


@contextmanager
def pipeline_up(home: Path, log: Path, replicas: int = 0) -> Iterator[subprocess.Popen[bytes]]:
    """`pipeline up` as a user starts it, on a fresh home; stopped with Ctrl-C's signal at the end.

    ``replicas``: 0 autoscales each pool (the default), N fixes every pool at N replicas.
    """
    env = dict(
        os.environ,
        PIPELINE_HOME=str(home),
        PIPELINE_FETCH_ALLOW_HOSTS="127.0.0.1",
        PIPELINE_FETCH_DOMAIN_INTERVAL="0",
        PIPELINE_METRICS_PORT="0",
    )
    command = [str(Path(sys.executable).parent / "pipeline"), "up", "--replicas", str(replicas)]
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    ends = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > ends:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def _ended(db: Path, ends: list[tuple[str, str]], since: float) -> int:
    """Checks that ended at one of ``ends`` (stage, outcome) since ``since`` (Unix seconds), read from `checks`."""
    import sqlite3

    count = 0
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as connection:
        for stage, outcome in ends:
            query = "SELECT count(*) FROM checks WHERE stage = ? AND outcome = ? AND started_at >= datetime(?, ?)"
            count += connection.execute(query, (stage, outcome, since - 1, "unixepoch")).fetchone()[0]
    return count


async def _publish(url: str, events: list[dict[str, object]]) -> None:
    """Publish the events as any producer would: JetStream publishes, acknowledged, 200 at a time."""
    connection = await nats.connect(url)
    js = connection.jetstream()
    for start in range(0, len(events), 200):
        batch = events[start : start + 200]
        await asyncio.gather(*(js.publish("pipeline.events.check", json.dumps(e).encode()) for e in batch))
    await connection.close()


def run_pipeline(
    pages: Pages, rounds: tuple[str, ...], timeout: float, breakdown: bool = False, replicas: int = 0
) -> list[Round]:
    results = []
    with tempfile.TemporaryDirectory() as tmp, pipeline_up(Path(tmp), Path(tmp) / "up.log", replicas) as process:
        home = Path(tmp)
        _wait(lambda: running_url(home) is not None and (home / "pipeline.db").exists(), 60, "pipeline up")
        url = running_url(home)
        assert url is not None
        time.sleep(10)  # every stage's first worker starts: a round measures checks, not the pipeline's own start
        events: list[dict[str, object]] = [
            {"url": u, "selector": ".price", "rule": "price < 100", "notify": [pages.inbox]} for u in pages.urls
        ]
        for name in rounds:
            if name == "recheck, all changed":
                pages.round += 1
            cpu_before, wall_before, started = cpu_seconds(process.pid), time.monotonic(), time.time()
            kinds_before = cpu_by_kind(process.pid)
            peak = peak_rss_mb(process.pid)
            asyncio.run(_publish(url, events))

            def done(ends: list[tuple[str, str]] = ENDS[name], since: float = started) -> bool:
                nonlocal peak
                peak = max(peak, peak_rss_mb(process.pid))
                return _ended(home / "pipeline.db", ends, since) >= len(events)

            _wait(done, timeout, f"{name}: {len(events)} checks to end at {ENDS[name]}; see {home}/up.log")
            seconds = time.monotonic() - wall_before
            results.append(Round(name, len(events), seconds, cpu_seconds(process.pid) - cpu_before, peak))
            print(f"  pipeline up, {name}: {len(events) / seconds:.0f} checks/s", flush=True)
            if breakdown:
                log = (home / "up.log").read_text(errors="replace").splitlines()
                for line in [line for line in log if "replicas" in line][-8:]:
                    print(f"    {line.strip()[:330]}")
                kinds = cpu_by_kind(process.pid)
                for kind, total in sorted(kinds.items(), key=lambda item: -item[1]):
                    print(f"    {kind}: {(total - kinds_before.get(kind, 0.0)) * 1000 / len(events):.1f} ms per check")
            time.sleep(3)  # let the pools settle before the next round
    return results


def run_changedetection(pages: Pages, rounds: tuple[str, ...], workers: int, timeout: float) -> list[Round]:
    from peers.changedetection import ChangeDetection

    results = []
    with ChangeDetection(workers=workers) as peer:
        peer.add(pages.urls, selector=".price")
        for name in rounds:
            if name == "recheck, all changed":
                pages.round += 1
            measured = peer.check_all(timeout=timeout)
            results.append(Round(name, measured.checks, measured.seconds, measured.cpu_seconds))
            print(f"  changedetection.io, {name}: {measured.checks / measured.seconds:.0f} checks/s", flush=True)
    return results


def median(runs: list[list[Round]]) -> list[Round]:
    """Per round, the run with the median checks/s (its own seconds and CPU, not a mix of runs)."""
    return [sorted(same, key=lambda r: r.per_second)[len(same) // 2] for same in zip(*runs, strict=True)]


def table(title: str, runs: dict[str, list[list[Round]]]) -> None:
    print(f"\n{title}\n")
    print("| system | round | checks | seconds | checks/s | range over runs | CPU ms per check |")
    print("|---|---|---:|---:|---:|---|---:|")
    for system, each in runs.items():
        for r, same in zip(median(each), zip(*each, strict=True), strict=True):
            spread = f"{min(x.per_second for x in same):.0f}-{max(x.per_second for x in same):.0f}"
            cells = [system, r.name, r.checks, f"{r.seconds:.1f}", f"{r.per_second:.0f}", spread, f"{r.cpu_ms:.1f}"]
            print("| " + " | ".join(map(str, cells)) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=1000)
    parser.add_argument("--only", choices=("pipeline", "changedetection"), help="run one system only")
    parser.add_argument("--workers", type=int, default=10, help="changedetection.io's fetch workers")
    parser.add_argument("--slow", action="store_true", help="pages answer after 1 s; first check only")
    parser.add_argument("--breakdown", action="store_true", help="CPU per check by process, each round")
    parser.add_argument("--replicas", type=int, default=0, help="pipeline up --replicas N (0: autoscaled)")
    parser.add_argument("--runs", type=int, default=1, help="runs of each system, alternating; medians shown")
    parser.add_argument("--timeout", type=float, default=900, help="seconds a round may take at most")
    args = parser.parse_args()

    rounds = ROUNDS[:1] if args.slow else ROUNDS
    delay = 1.0 if args.slow else 0.0
    runs: dict[str, list[list[Round]]] = {}
    for _ in range(args.runs):  # alternating, so a slower stretch of the machine falls on both
        if args.only != "pipeline":
            with Pages(args.pages, delay=delay) as pages:
                found = run_changedetection(pages, rounds, args.workers, args.timeout)
            runs.setdefault("changedetection.io", []).append(found)
        if args.only != "changedetection":
            with Pages(args.pages, delay=delay) as pages:
                runs.setdefault("pipeline up", []).append(
                    run_pipeline(pages, rounds, args.timeout, args.breakdown, args.replicas)
                )

    kind = f"{args.pages} pages" + (", each answering after 1 s" if args.slow else " of about 6 KB")
    table(f"{kind}, {os.cpu_count()} cores, median of {args.runs} run(s)", runs)
    if len(runs) == 2:
        print()
        ours, theirs = median(runs["pipeline up"]), median(runs["changedetection.io"])
        for a, b in zip(ours, theirs, strict=True):
            print(f"- {a.name}: pipeline up / changedetection.io = {a.per_second / b.per_second:.1f}x")
    if "pipeline up" in runs:
        peak = max(r.peak_rss_mb for each in runs["pipeline up"] for r in each)
        print(f"- pipeline up, peak memory of all its processes: {peak:.0f} MB")


if __name__ == "__main__":
    main()
