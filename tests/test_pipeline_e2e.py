"""End to end: a JSON event on NATS becomes a signed webhook, through real worker processes (tests/live.py)."""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from pathlib import Path

import psutil
import pytest
from standardwebhooks.webhooks import Webhook
from typer.testing import CliRunner

from pipeline.broker import JetStreamBroker
from pipeline.cli import app
from pipeline.render import chromium_path
from tests.conftest import wait_for
from tests.live import LLM_KEY, SECRET, declared, publish, spawn
from tests.openai_server import OpenAIServer
from tests.site import Page, Site
from tests.test_render import LATE_PRICE, browsers_under


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


@pytest.mark.skipif(chromium_path() is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_a_price_written_by_javascript_alerts_through_the_render_stage(
    env, pipeline: JetStreamBroker, tmp_path: Path
) -> None:
    with Site() as shop, Site() as receiver:
        shop.routes["/lamp"] = Page(LATE_PRICE, headers={"Content-Type": "text/html"})
        check = {"url": shop.url("/lamp"), "selector": ".price", "rule": "price < 100", "notify": [receiver.url("/h")]}
        publish(env, "check", check)  # fetched over HTTP: the price is not there yet, so no alert
        publish(env, "check", {**check, "fetch": "browser", "wait_for": ".price.loaded"})
        assert wait_for(lambda: len(receiver.posts) == 1, 90), "no webhook arrived"
        payload = json.loads(receiver.posts[0][2])
        assert payload["data"]["summary"] == "price is 42, < 100"
        key = payload["data"]["screenshot"]  # the page as the browser showed it, kept: fetched by its key
        shouted = key.upper()  # as some tools print hex: the same key
        saved = CliRunner().invoke(app, ["screenshot", shouted, "--output", str(tmp_path / "lamp.png")])
        assert saved.exit_code == 0, saved.output
        assert (tmp_path / "lamp.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        into_a_directory = CliRunner().invoke(app, ["screenshot", key, "-o", str(tmp_path)])
        assert into_a_directory.exit_code == 2 and "cannot write" in into_a_directory.output
        gone = CliRunner().invoke(app, ["screenshot", "sha256:" + "0" * 64])
        assert gone.exit_code == 1 and "no screenshot sha256:000" in gone.output
        pipeline.join("fetch", timeout=30_000)
        pipeline.join("analyse", timeout=30_000)
        assert len(receiver.posts) == 1


@pytest.mark.skipif(chromium_path() is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_a_render_worker_killed_mid_check_loses_nothing(env, make_broker, tmp_path: Path) -> None:
    declared(make_broker(prefix=env["PIPELINE_PREFIX"]))
    rest = [spawn(env, tmp_path, "-m", "dramatiq", "actors", "--queues", "fetch", "scrape", "analyse", "alert"),
            spawn(env, tmp_path, "-m", "pipeline.cli", "scheduler", "--port", "0")]  # fmt: skip
    render = spawn(env, tmp_path, "-m", "dramatiq", "actors", "--queues", "render", "--processes", "1")
    slow = LATE_PRICE.replace(b"300);", b"5000);")  # the price after 5 s: the worker dies while it waits
    try:
        with Site() as shop, Site() as receiver:
            shop.routes["/lamp"] = Page(slow, headers={"Content-Type": "text/html"})
            publish(
                env,
                "check",
                {
                    "url": shop.url("/lamp"),
                    "selector": ".price",
                    "rule": "price < 100",
                    "fetch": "browser",
                    "wait_for": ".price.loaded",
                    "notify": [receiver.url("/h")],
                },
            )
            assert wait_for(lambda: len(shop.requests) == 1, 60), "the render did not start"
            browsers = browsers_under(render.pid)
            assert browsers, "no browser under the render worker"
            os.killpg(render.pid, signal.SIGKILL)  # no shutdown: its check is unacked, mid-render
            render.wait()
            # Chromium runs in a process group of its own: it must go with its driver, not linger.
            assert wait_for(lambda: not any(psutil.pid_exists(pid) for pid in browsers), 15), "the browser outlived it"
            assert receiver.posts == []

            render = spawn(env, tmp_path, "-m", "dramatiq", "actors", "--queues", "render", "--processes", "1")
            assert wait_for(lambda: len(receiver.posts) == 1, 120), "the check was lost with its worker"
            payload = json.loads(receiver.posts[0][2])
            assert payload["data"]["summary"] == "price is 42, < 100"
            assert len(shop.requests) == 2  # rendered again from the start, once
    finally:
        for process in [*rest, render]:
            process.terminate()
        for process in [*rest, render]:
            process.wait(30)


def test_invalid_events_are_dead_lettered_with_the_reason(env, pipeline: JetStreamBroker) -> None:
    publish(env, "check", b'{"url": "ftp://example.com"}')
    publish(env, "check", b"not json")
    # A rule or selector that cannot be understood is refused here, not left to end a check in silence.
    publish(env, "check", b'{"url": "https://example.com", "selector": ".price", "rule": "price <"}')
    assert wait_for(lambda: pipeline.dead_letter_count("events") == 3, 30)
    names = pipeline.names("events")
    last = pipeline.run(pipeline.js.get_last_msg(f"{pipeline.prefix}_dead", names.dead_subject))
    assert "rule: cannot understand rule 'price <'" in last.headers["Pipeline-Dead-Reason"]


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
    from pipeline.names import STAGES
    from pipeline.nats_server import free_port

    with Site() as shop, Site() as receiver:
        shop.routes["/p"] = Page(b"<html><body><p class='price'>Price: 95 EUR</p></body></html>")
        publish(env, "check", {"url": shop.url("/p"), "selector": ".price", "rule": "price < 100",
                               "notify": [receiver.url("/hook")]})  # fmt: skip
        publish(env, "check", b"not json")
        assert wait_for(lambda: len(receiver.posts) == 1, 60), "no webhook arrived"
    port = free_port()
    server = exporter.serve(pipeline, list(STAGES), port, host="127.0.0.1", multiprocess_dir=str(tmp_path / "metrics"))

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
        'pipeline_events_total{kind="check",outcome="accepted"} 1.0',  # the ingest's own process
        'pipeline_events_total{kind="check",outcome="invalid"} 1.0',
    ]
    try:
        assert wait_for(lambda: all(line in scrape() for line in expected), 20), [
            line for line in expected if line not in scrape()
        ]
        assert "pipeline_fetch_duration_seconds_bucket" in scrape()
    finally:
        server.shutdown()
