"""End to end: a JSON event on NATS becomes a signed webhook, through real worker processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from standardwebhooks.webhooks import Webhook

from pipeline import runtime
from pipeline.broker import JetStreamBroker
from pipeline.ingest import Ingest
from pipeline.nats_server import NatsServer
from pipeline.webhooks import new_secret
from tests.conftest import ROOT, wait_for
from tests.openai_server import OpenAIServer
from tests.site import Page, Site

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
    """Workers for all four stages (one process) and the ingest, as `pipeline up` runs them."""
    log = open(tmp_path / "workers.log", "w")  # noqa: SIM115
    metrics_dir = tmp_path / "metrics"  # as `pipeline up` runs them: every worker writes its metrics here
    metrics_dir.mkdir()
    metrics_env = {"dramatiq_prom_db": str(metrics_dir), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    workers = subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "actors", "--processes", "1", "--threads", "4"],
        cwd=ROOT, env={**os.environ, **env, **metrics_env}, stdout=log, stderr=log, start_new_session=True,
    )  # fmt: skip
    broker = make_broker(prefix=env["PIPELINE_PREFIX"])
    for stage in ("fetch", "scrape", "analyse", "alert"):
        broker.declare_queue(stage)
    ingest = Ingest(broker, runtime.context(broker))
    ingest.declare()  # before anything is published: core NATS drops what no stream captures
    thread = threading.Thread(target=ingest.run, daemon=True)
    thread.start()
    yield broker
    ingest.stop()
    thread.join(5)
    workers.terminate()
    workers.wait(30)
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


def test_a_check_event_ends_as_a_signed_webhook(env, pipeline: JetStreamBroker) -> None:
    with Site() as shop, Site() as receiver:
        shop.routes["/kettle"] = Page(b"<html><body><p class='price'>Price: 95 EUR</p></body></html>")
        hook = receiver.url("/hook")
        publish(env, "check", {"url": shop.url("/kettle"), "selector": ".price", "rule": "price < 100",
                               "notify": [hook]})  # fmt: skip

        assert wait_for(lambda: len(receiver.posts) == 1, 60), "no webhook arrived"
        _, headers, body = receiver.posts[0]
        payload = Webhook(SECRET).verify(body, {k.lower(): v for k, v in headers.items()})
        assert payload["data"]["summary"] == "price is 95, < 100"
        assert payload["data"]["url"] == shop.url("/kettle")

        # The page changes in a way the rule does not care about: nothing is sent.
        shop.routes["/kettle"] = Page(b"<html><body><p class='price'>Price: 120 EUR</p></body></html>")
        publish(env, "check", {"url": shop.url("/kettle"), "selector": ".price", "rule": "price < 100",
                               "notify": [hook]})  # fmt: skip
        assert wait_for(lambda: len([r for r in shop.requests if r[0] == "/kettle"]) == 2, 30)
        pipeline.join("alert", timeout=30_000)
        pipeline.join("analyse", timeout=30_000)
        assert len(receiver.posts) == 1


def test_invalid_events_are_dead_lettered_with_the_reason(env, pipeline: JetStreamBroker) -> None:
    publish(env, "check", b'{"url": "ftp://example.com"}')
    publish(env, "check", b"not json")
    assert wait_for(lambda: pipeline.dead_letter_count("events") == 2, 30)
    names = pipeline.names("events")
    last = pipeline.run(pipeline.js.get_last_msg(f"{pipeline.prefix}_dead", names.dead_subject))
    assert "not JSON" in last.headers["Pipeline-Dead-Reason"]


@pytest.fixture
def llm(env: dict[str, str]) -> Iterator[OpenAIServer]:
    """A local OpenAI-compatible server the workers' analyser talks to (set before they start)."""
    with OpenAIServer([LLM_KEY]) as server:
        env.update(PIPELINE_OPENAI_API_KEYS=LLM_KEY, PIPELINE_OPENAI_BASE_URL=server.base_url)
        yield server


LLM_KEY = "sk-e2e-" + "7" * 40


def test_a_question_is_answered_by_the_llm(env, llm: OpenAIServer, pipeline: JetStreamBroker) -> None:
    with Site() as shop, Site() as receiver:
        shop.routes["/kettle"] = Page(b"<html><body><p class='stock'>Kettle: back in stock</p></body></html>")
        publish(env, "check", {"url": shop.url("/kettle"), "selector": ".stock", "question": "Is the kettle in stock?",
                               "notify": [receiver.url("/hook")]})  # fmt: skip
        assert wait_for(lambda: len(receiver.posts) == 1, 60), "no webhook arrived"
        payload = json.loads(receiver.posts[0][2])
        assert payload["data"]["summary"] == "1 added line(s) match"  # the model's words, not a rule's
        assert payload["data"]["evidence"] == ["Kettle: back in stock"]
        assert llm.count(200) == 1


def test_refused_llm_keys_dead_letter_the_analysis_without_showing_them(
    env, llm: OpenAIServer, pipeline: JetStreamBroker, tmp_path: Path
) -> None:
    llm.accounts.clear()  # the server now knows no key: every call is a 401
    with Site() as shop:
        shop.routes["/p"] = Page(b"<html><body><p>Kettle back in stock</p></body></html>")
        publish(env, "check", {"url": shop.url("/p"), "question": "Is the kettle in stock?", "notify": []})
        assert wait_for(lambda: pipeline.dead_letter_count("analyse") == 1, 60)
    names = pipeline.names("analyse")
    last = pipeline.run(pipeline.js.get_last_msg(f"{pipeline.prefix}_dead", names.dead_subject))
    reason = last.headers["Pipeline-Dead-Reason"]
    assert "every API key was refused" in reason and "401" in reason
    assert LLM_KEY not in reason and LLM_KEY not in last.data.decode()
    log = (tmp_path / "workers.log").read_text()
    assert "every API key was refused" in log and LLM_KEY not in log


def test_workers_metrics_and_queue_lag_are_served_by_the_exporter(
    env, pipeline: JetStreamBroker, tmp_path: Path
) -> None:
    from pipeline import exporter
    from pipeline.nats_server import free_port
    from pipeline.stages import STAGES

    with Site() as shop, Site() as receiver:
        shop.routes["/p"] = Page(b"<html><body><p class='price'>Price: 95 EUR</p></body></html>")
        publish(env, "check", {"url": shop.url("/p"), "selector": ".price", "rule": "price < 100",
                               "notify": [receiver.url("/hook")]})  # fmt: skip
        publish(env, "check", b"not json")
        assert wait_for(lambda: len(receiver.posts) == 1, 60), "no webhook arrived"
    port = free_port()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "metrics")  # what `pipeline up` sets
    try:
        server = exporter.serve(pipeline, list(STAGES), port, host="127.0.0.1")
    finally:
        del os.environ["PROMETHEUS_MULTIPROC_DIR"]

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return response.read().decode()

    expected = [
        'dramatiq_messages_total{actor_name="fetch",queue_name="fetch"} 1.0',  # Dramatiq's middleware
        'pipeline_checks_total{outcome="fetched",stage="fetch"} 1.0',
        'pipeline_checks_total{outcome="relevant",stage="analyse"} 1.0',
        'pipeline_fetch_responses_total{code="200"} 1.0',
        'pipeline_alerts_total{channel="webhook",outcome="sent"} 1.0',
        'pipeline_worker_processes{queue="alert"} 1.0',
        'pipeline_queue_lag{queue="fetch"} 0.0',
        'pipeline_dead_letters{queue="events"} 1.0',
        "pipeline_exporter_jetstream_up 1.0",
    ]
    try:
        assert wait_for(lambda: all(line in scrape() for line in expected), 20), [
            line for line in expected if line not in scrape()
        ]
        assert "pipeline_fetch_duration_seconds_bucket" in scrape()
    finally:
        server.shutdown()
