"""Autoscaling benchmark: one load trace, replayed against an autoscaled pool and fixed pools.

The pool is the fetch stage's, as ``autoscale/keda/base/fetch.yaml`` sets it:
a replica is ``dramatiq --processes 1 --threads 16``, scaled between 1 and 20
replicas on a lag threshold of 200, every 5 s, with KEDA's cooldown and the
HPA's scale-down window and rate policies.  Each message waits one second (a
slow website), so a replica serves 16 messages/s.

The trace (per-second arrivals): a quiet start, every monitor due at once
(a burst), a busy stretch above one replica's capacity, then quiet again.
It is replayed three times, on a fresh stream each time:

- **autoscaled**: the one-machine :class:`~pipeline.autoscale.Autoscaler`;
- **fixed at the minimum** (1 replica) and **fixed at the maximum** (20).

Reported per run: how long the burst's backlog takes to clear (until the
lag is under one replica's threshold), time to drain (last arrival to last
message done), message latency (enqueue to done), the most replicas, and worker-seconds
(replica-seconds, draining replicas included) over one common window, from
the trace's start until the last run is drained and back at its resting size.
A PNG of lag and replicas over time goes to ``docs/autoscale.png``, the
samples behind it to ``docs/autoscale.json``.

    python bench/autoscale.py                  # about 13 minutes
    python bench/autoscale.py --service 0.5    # seconds per message
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import dramatiq  # noqa: E402

from pipeline.autoscale import Autoscaler, Policy, stage_policies  # noqa: E402
from pipeline.broker import JetStreamBroker  # noqa: E402
from pipeline.nats_server import NatsServer  # noqa: E402
from pipeline.workers import WorkerPool  # noqa: E402

QUEUE = "bench"
BOOT_LIMIT_SECONDS = 120  # every run's starting replicas boot before the trace begins
LIMIT_SECONDS = 900  # a run that has not drained by then is reported as such


def load_trace() -> list[int]:
    """Messages arriving in each second."""
    quiet, busy = 8, 30  # a replica serves 16/s
    trace = [quiet] * 20 + [busy] * 60 + [quiet] * 40
    trace[20] += 2000  # every monitor due at once
    return trace


@dataclass
class Sample:
    t: float
    lag: int
    replicas: int
    draining: int
    done: int


@dataclass
class Run:
    name: str
    samples: list[Sample] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    drained_at: float | None = None  # seconds from the trace's start
    rested_at: float | None = None  # drained and back at its resting size

    def backlog_cleared(self, burst_at: float, threshold: float) -> float | None:
        """Seconds from the burst until the lag is back under one replica's threshold."""
        after = [s.t for s in self.samples if s.t > burst_at + 1 and s.lag < threshold]
        return after[0] - burst_at if after else None

    def worker_seconds(self, horizon: float) -> float:
        """Replica-seconds from 0 to ``horizon``, the last size held after the run's end."""
        total = 0.0
        for sample, following in itertools.pairwise(self.samples):
            total += (sample.replicas + sample.draining) * max(0.0, min(following.t, horizon) - sample.t)
        last = self.samples[-1]
        return total + (last.replicas + last.draining) * max(0.0, horizon - last.t)


def replay(name: str, policy: Policy, trace: list[int], server: NatsServer, work: Path, service: float) -> Run:
    """Start the pool, replay the trace into its queue, and sample until drained and at rest."""
    prefix = f"bench-autoscale-{uuid.uuid4().hex[:8]}"
    records, booted = work / f"{name}.records", work / f"{name}.booted"
    records.touch()
    booted.touch()
    env = dict(
        os.environ,
        PIPELINE_NATS_URL=server.url,
        BENCH_PREFIX=prefix,
        BENCH_RECORD_FILE=str(records),
        BENCH_BOOT_FILE=str(booted),
        BENCH_SERVICE_SECONDS=str(service),
        PYTHONPATH=str(ROOT),
    )
    broker = JetStreamBroker(server.url, prefix=prefix)
    broker.declare_queue(QUEUE)
    pool = WorkerPool(
        QUEUE,
        env=env,
        log_dir=work / "logs" / name,
        module="bench.autoscale_worker",
        processes=policy.processes,
        threads=policy.threads,
        shutdown_timeout=policy.shutdown_timeout,
    )
    autoscaler = None
    if name == "autoscaled":
        autoscaler = Autoscaler(broker.lag, {QUEUE: pool}, {QUEUE: replace(policy, queue=QUEUE)})
        autoscaler.start()
        resting = policy.min_replicas
    else:
        resting = policy.min_replicas if name == "fixed-min" else policy.max_replicas
        pool.resize(resting)
    run = Run(name)
    total = sum(trace)
    try:
        wait_for_boot(booted, resting * policy.processes)
        started = time.monotonic()
        publisher = threading.Thread(target=publish, args=(server.url, prefix, trace, started), daemon=True)
        publisher.start()
        while time.monotonic() - started < LIMIT_SECONDS:
            now = time.monotonic() - started
            done = records.read_bytes().count(b"\n")
            sample = Sample(now, broker.lag().get(QUEUE, 0), pool.size, pool.draining, done)
            run.samples.append(sample)
            if done >= total and run.drained_at is None:
                run.drained_at = now
                print(f"  {name}: drained at {now:.0f} s", flush=True)
            if run.drained_at is not None and sample.replicas == resting and not sample.draining:
                run.rested_at = now
                break
            time.sleep(1)
        publisher.join()
    finally:
        if autoscaler is not None:
            autoscaler.stop()
        pool.stop()
        broker.close()
    run.latencies = sorted(float(line.split()[1]) for line in records.read_text().splitlines())
    return run


def wait_for_boot(booted: Path, processes: int) -> None:
    """Until ``processes`` worker processes have booted: a fixed pool is charged from the trace's start, up."""
    deadline = time.monotonic() + BOOT_LIMIT_SECONDS
    while booted.read_bytes().count(b"\n") < processes:
        if time.monotonic() > deadline:
            raise SystemExit(f"{processes} worker processes did not boot within {BOOT_LIMIT_SECONDS} s")
        time.sleep(0.2)
    time.sleep(1)  # their first pull requests


def publish(url: str, prefix: str, trace: list[int], started: float) -> None:
    """Each second's arrivals, spread over ten slices of that second, on a connection of their own."""
    broker = JetStreamBroker(url, prefix=prefix)
    broker.declare_queue(QUEUE)
    n = 0
    for second, count in enumerate(trace):
        for tick in range(10):
            due = started + second + tick / 10
            time.sleep(max(0.0, due - time.monotonic()))
            share = count // 10 + (1 if tick < count % 10 else 0)
            with broker.batch():
                for _ in range(share):
                    broker.enqueue(
                        dramatiq.Message(
                            queue_name=QUEUE, actor_name="visit", args=(n, time.time()), kwargs={}, options={}
                        )
                    )
                    n += 1
    broker.close()


def percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def report(runs: list[Run], trace: list[int], policy: Policy, service: float) -> None:
    horizon = max(run.rested_at or run.samples[-1].t for run in runs)
    last_arrival = len(trace)
    burst_at = trace.index(max(trace))
    print(
        f"\n{sum(trace)} messages over {len(trace)} s (burst of {max(trace)} at t={burst_at} s); "
        f"{service:g} s each; a replica = {policy.processes} process x {policy.threads} threads; "
        f"policy: {policy.min_replicas}..{policy.max_replicas} replicas, lag threshold {policy.lag_threshold:g}, "
        f"polling {policy.polling:g} s, cooldown {policy.cooldown:g} s, scale-down window {policy.down_window:g} s; "
        f"{os.cpu_count()} cores\n"
    )
    print(
        "| pool | burst's backlog cleared in | drained after the last arrival | latency p50 / p95 / max "
        "| most replicas | worker-seconds | vs autoscaled |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    auto = runs[0].worker_seconds(horizon)
    for run in runs:
        cleared = run.backlog_cleared(burst_at, policy.lag_threshold)
        drain = f"{run.drained_at - last_arrival:.0f} s" if run.drained_at is not None else "not drained"
        lat = run.latencies
        cost = run.worker_seconds(horizon)
        print(
            f"| {run.name} | {f'{cleared:.0f} s' if cleared is not None else 'never'} | {drain} "
            f"| {percentile(lat, 0.5):.1f} / {percentile(lat, 0.95):.1f} / {(lat[-1] if lat else float('nan')):.1f} s "
            f"| {max(s.replicas for s in run.samples)} | {cost:,.0f} | {cost / auto:.2f}x |"
        )
    print(
        f"\nbacklog cleared: from the burst until the lag is under one replica's threshold "
        f"({policy.lag_threshold:g}); worker-seconds: replica-seconds over the same {horizon:.0f} s window "
        "for every pool (trace start to the last at rest)"
    )


def plot(runs: list[Run], trace: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (arrivals, lag, replicas) = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    arrivals.bar(range(len(trace)), trace, width=1.0, color="grey")
    arrivals.set_yscale("symlog", linthresh=50)
    arrivals.set_ylabel("arrivals / s")
    for run in runs:
        t = [s.t for s in run.samples]
        lag.plot(t, [s.lag for s in run.samples], label=run.name)
        replicas.step(t, [s.replicas + s.draining for s in run.samples], where="post", label=run.name)
    lag.set_ylabel("lag (messages)")
    replicas.set_ylabel("replicas")
    replicas.set_xlabel("seconds from the trace's start")
    replicas.legend()
    fig.suptitle("The fetch stage's pool under one load trace: autoscaled vs fixed")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    print(f"plot: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--service", type=float, default=1.0, help="Seconds each message takes.")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "autoscale.png", help="Where the PNG goes.")
    args = parser.parse_args()

    policy = stage_policies()["fetch"]
    trace = load_trace()
    with tempfile.TemporaryDirectory() as work, NatsServer(Path(work) / "nats") as server:
        runs = []
        for name in ("autoscaled", "fixed-min", "fixed-max"):
            print(f"replaying the trace: {name}", flush=True)
            runs.append(replay(name, policy, trace, server, Path(work), args.service))
        report(runs, trace, policy, args.service)
        plot(runs, trace, args.plot)
        samples = {run.name: [asdict(sample) for sample in run.samples] for run in runs}
        args.plot.with_suffix(".json").write_text(json.dumps({"trace": trace, "samples": samples}) + "\n")


if __name__ == "__main__":
    main()
