"""LLM quota benchmark: N analyses by W worker processes against a server that enforces a quota.

The acceptance run of issue 5.  A local OpenAI-compatible server
(``tests/openai_server.py``) enforces requests and tokens per period with
OpenAI's token-bucket model and answers 429 when a bucket is short.
``W`` analyse workers (``dramatiq actors --queues analyse``, one thread
each) judge ``N`` changes with the LLM analyser, sharing the key's quota
through NATS KV.  The run passes with zero 429s and at least 70% of the
quota used: calls made / (bucket capacity + refill rate x duration).

    python bench/llm.py                                  # 2,000 analyses, 8 workers, 40 requests/s
    python bench/llm.py --analyses 500 --rps 20 --keys 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dramatiq import Message
from sqlmodel import Session, func, select

from pipeline.broker import JetStreamBroker
from pipeline.db import make_engine, migrate
from pipeline.models import Finding, Snapshot
from pipeline.nats_server import NatsServer
from pipeline.workers import WorkerPool
from tests.openai_server import OpenAIServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--analyses", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=8, help="analyse worker processes, one thread each")
    parser.add_argument("--rps", type=float, default=40, help="the server's request quota per second, per key")
    parser.add_argument("--tps", type=float, default=40_000, help="the server's token quota per second, per key")
    parser.add_argument("--keys", type=int, default=1, help="API keys in the pool")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds the server takes per answer")
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()

    keys = [f"sk-bench-{n}-" + "x" * 32 for n in range(args.keys)]
    with (
        tempfile.TemporaryDirectory() as home,
        NatsServer(Path(home) / "nats") as server,
        OpenAIServer(keys, rpm=args.rps, tpm=args.tps, period=1.0) as llm,
    ):
        llm.delay = args.latency
        database = f"sqlite:///{home}/bench.db"
        env = dict(
            os.environ,
            PIPELINE_NATS_URL=server.url,
            PIPELINE_PREFIX="bench",
            PIPELINE_DATABASE_URL=database,
            PIPELINE_OPENAI_API_KEYS=",".join(keys),
            PIPELINE_OPENAI_BASE_URL=llm.base_url,
            PIPELINE_LLM_RPM=str(args.rps),
            PIPELINE_LLM_TPM=str(args.tps),
            PIPELINE_LLM_QUOTA_PERIOD="1",
        )
        engine = make_engine(database)
        migrate(engine)
        jobs = []
        with Session(engine) as session:
            for n in range(args.analyses):
                before = Snapshot(source=f"s{n}", content_hash=f"a{n}", text=f"Item {n}\nOut of stock", trace="")
                session.add(before)
                session.flush()
                after = Snapshot(source=f"s{n}", content_hash=f"b{n}", text=f"Item {n}\nIn stock: {n} left",
                                 trace="", before_id=before.id)  # fmt: skip
                session.add(after)
                session.flush()
                jobs.append({"source": f"s{n}", "before_id": before.id, "after_id": after.id,
                             "question": "Is the item in stock?", "notify": [], "trace": f"t{n}"})  # fmt: skip
            session.commit()

        broker = JetStreamBroker(server.url, prefix="bench")
        broker.declare_queue("analyse")
        pool = WorkerPool("analyse", env=env, threads=1, log_dir=Path(home) / "logs")
        pool.resize(args.workers)
        time.sleep(3)  # let the workers boot before the clock starts
        started = time.monotonic()
        with broker.batch():
            for job in jobs:
                broker.enqueue(Message(queue_name="analyse", actor_name="analyse", args=(job,), kwargs={}, options={}))
        done = 0
        last_report = started
        while done < args.analyses and time.monotonic() - started < args.timeout:
            time.sleep(0.5)
            with Session(engine) as session:
                done = session.exec(select(func.count()).select_from(Finding)).one()
            if time.monotonic() - last_report >= 10:
                last_report = time.monotonic()
                print(f"  {done} of {args.analyses} analysed, {llm.count(429)} 429s", file=sys.stderr)
        pool.stop()
        broker.close()

        ok = [entry[0] for entry in llm.log if entry[2] == 200]
        duration = max(ok) - min(ok) if len(ok) > 1 else 0.0
        allowed = args.keys * (args.rps + args.rps * duration)  # bucket capacity + refill over the run
        used = len(ok) / allowed
        rate = len(ok) / duration if duration else 0.0

    quota = f"server quota {args.rps:g} requests/s and {args.tps:g} tokens/s per key"
    setup = f"{args.workers} workers x 1 thread, {args.keys} key(s), {quota}, {os.cpu_count()} cores"
    print(f"\n{args.analyses} analyses, {setup}\n")
    print("| measure | value |")
    print("|---|---:|")
    print(f"| analyses stored | {done} of {args.analyses} |")
    print(f"| calls answered (200) | {len(ok)} |")
    print(f"| 429s from the server | {llm.count(429)} |")
    print(f"| first to last call | {duration:.1f} s |")
    print(f"| achieved rate | {rate:.1f} calls/s (quota {args.rps * args.keys:g}/s, limiter target "
          f"{0.8 * args.rps * args.keys:g}/s) |")  # fmt: skip
    print(f"| quota used: calls / (capacity + refill x duration) | {used:.1%} |")
    verdict = "PASS" if llm.count(429) == 0 and used >= 0.70 and done == args.analyses else "FAIL"
    print(f"\n{verdict}: zero 429s and at least 70% of the quota used")
    sys.exit(0 if verdict == "PASS" else 1)


if __name__ == "__main__":
    main()
