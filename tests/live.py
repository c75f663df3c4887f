"""A live pipeline for tests: worker processes for every stage and the ingest, as `pipeline up` runs them.

The fixtures (``env``, ``pipeline``, ``llm``) are made available to every test module by conftest.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from pipeline import runtime
from pipeline.broker import JetStreamBroker
from pipeline.ingest import Ingest
from pipeline.names import STAGES
from pipeline.nats_server import NatsServer
from pipeline.webhooks import new_secret
from tests.openai_server import OpenAIServer

ROOT = Path(__file__).resolve().parent.parent

SECRET = new_secret()


@pytest.fixture
def env(nats_server: NatsServer, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {
        "PIPELINE_NATS_URL": nats_server.url,
        "PIPELINE_PREFIX": prefix,
        "PIPELINE_DATABASE_URL": f"sqlite:///{tmp_path / 'pipeline.db'}",
        "PIPELINE_FETCH_ALLOW_HOSTS": "127.0.0.1",
        "PIPELINE_WEBHOOK_SECRET": SECRET,
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    runtime.reset()
    yield values
    runtime.reset()


@pytest.fixture
def pipeline(env: dict[str, str], make_broker, tmp_path: Path) -> Iterator[JetStreamBroker]:
    """Workers for every stage (one process) and the ingest (`pipeline scheduler`), as `pipeline up` runs them.

    Every process writes its metrics to ``tmp_path / "metrics"``, the directory `pipeline up` shares.
    """
    log = open(tmp_path / "workers.log", "w")  # noqa: SIM115
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    process_env = {
        **os.environ,
        **env,
        "dramatiq_prom_db": str(metrics_dir),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    broker = make_broker(prefix=env["PIPELINE_PREFIX"])
    for stage in STAGES:
        broker.declare_queue(stage)
    Ingest(broker, runtime.context(broker)).declare()  # before anything is published: core NATS keeps nothing
    processes = [
        subprocess.Popen(command, cwd=ROOT, env=process_env, stdout=log, stderr=log, start_new_session=True)
        for command in (
            [sys.executable, "-m", "dramatiq", "actors", "--processes", "1", "--threads", "4"],
            [sys.executable, "-m", "pipeline.cli", "scheduler", "--port", "0"],
        )
    ]
    yield broker
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(30)
    log.close()


def publish(env: dict[str, str], kind: str, event: dict | bytes) -> None:
    """What any producer does: a plain NATS publish of JSON (no Dramatiq, no JetStream API)."""
    import asyncio

    async def go() -> None:
        nc = await nats.connect(env["PIPELINE_NATS_URL"])
        data = event if isinstance(event, bytes) else json.dumps(event).encode()
        await nc.publish(f"{env['PIPELINE_PREFIX']}.events.{kind}", data)
        await nc.flush()
        await nc.close()

    asyncio.run(go())


@pytest.fixture
def llm(env: dict[str, str]) -> Iterator[OpenAIServer]:
    """A local OpenAI-compatible server the workers' analyser talks to (set before they start)."""
    with OpenAIServer([LLM_KEY]) as server:
        env.update(PIPELINE_OPENAI_API_KEYS=LLM_KEY, PIPELINE_OPENAI_BASE_URL=server.base_url)
        yield server


LLM_KEY = "sk-e2e-" + "7" * 40
