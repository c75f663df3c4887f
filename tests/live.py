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
    broker = declared(make_broker(prefix=env["PIPELINE_PREFIX"]))
    processes = [spawn(env, tmp_path, "-m", "dramatiq", "actors", "--processes", "1", "--threads", "4"),
                 spawn(env, tmp_path, "-m", "pipeline.cli", "scheduler", "--port", "0")]  # fmt: skip
    yield broker
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(30)


def declared(broker: JetStreamBroker) -> JetStreamBroker:
    """``broker`` with every stage's queue and the ingest's stream made, as `pipeline up` makes them first."""
    for stage in STAGES:
        broker.declare_queue(stage)
    Ingest(broker, runtime.context(broker)).declare()  # before anything is published: core NATS keeps nothing
    return broker


def spawn(env: dict[str, str], tmp_path: Path, *args: str) -> subprocess.Popen:
    """``python args`` in a session (process group) of its own, logging to ``tmp_path / "workers.log"``,
    writing metrics to ``tmp_path / "metrics"``."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir(exist_ok=True)
    process_env = {
        **os.environ,
        **env,
        "dramatiq_prom_db": str(metrics_dir),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    with open(tmp_path / "workers.log", "a") as log:
        return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=process_env, stdout=log, stderr=log,
                                start_new_session=True)  # fmt: skip


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
