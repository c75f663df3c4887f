"""The dashboards and alert rules against a real Prometheus scraping a live pipeline under load.

Every query of every panel is evaluated, and each panel must return at least
one series: a panel that shows nothing is an incident.  Every alert rule's
expression must evaluate too.  The NATS JetStream dashboard reads
prometheus-nats-exporter, a Go program that is not on PyPI or Debian, so
its panels are not evaluated here; compose/ runs the exporter beside NATS.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pipeline import exporter
from pipeline.broker import JetStreamBroker
from pipeline.deadletters import list_dead
from pipeline.names import STAGES
from pipeline.nats_server import free_port
from pipeline.render import chromium_path
from tests.conftest import ROOT, load_script, wait_for
from tests.live import publish
from tests.openai_server import OpenAIServer
from tests.site import Page, Site
from tests.test_render import LATE_PRICE

PROMETHEUS = shutil.which("prometheus")
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
RULES = ROOT / "compose" / "prometheus" / "alerts.yml"
CHROMIUM = chromium_path()  # without it the render panels cannot show data: they are evaluated, not required

needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus not installed (Debian: apt-get install prometheus; .ci/run installs it)"
)


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str) -> list[dict]:
        """The series ``expr`` returns now; an invalid query fails the test with Prometheus' reason."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr.replace("$__rate_interval", "1m")})
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as e:
            pytest.fail(f"{expr!r} does not evaluate: {e.read().decode()}")
        assert body["status"] == "success", body
        return body["data"]["result"]


@pytest.fixture
def metrics_port(pipeline: JetStreamBroker, tmp_path: Path) -> Iterator[int]:
    """The exporter, as `pipeline up` starts it, serving the directory its processes write to."""
    port = free_port()
    server = exporter.serve(pipeline, list(STAGES), port, host="127.0.0.1", multiprocess_dir=str(tmp_path / "metrics"))
    yield port
    server.shutdown()


@pytest.fixture
def prometheus(metrics_port: int, tmp_path: Path) -> Iterator[Prometheus]:
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "pipeline", "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = open(tmp_path / "prometheus.log", "w")  # noqa: SIM115
    process = subprocess.Popen(
        [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=log,
    )  # fmt: skip
    server = Prometheus(f"http://127.0.0.1:{port}")

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    assert wait_for(ready, 30), (tmp_path / "prometheus.log").read_text()[-2000:]
    yield server
    process.terminate()
    process.wait(10)
    log.close()


def load(env: dict[str, str], llm: OpenAIServer, shop: Site, inbox: Site) -> None:
    """Traffic that touches every panel: alerts by rule and by LLM, a 429, a 404, a 503 retried, a bad event,
    a page rendered in Chromium."""
    shop.routes["/kettle"] = Page(b"<p class='price'>Price: 95 EUR</p>")
    shop.routes["/stock"] = Page(b"<p class='stock'>Kettle: back in stock</p>")
    shop.routes["/gone"] = Page(b"gone", 404)
    busy = {"first": True}

    def once_busy(handler) -> Page:
        if busy.pop("first", False):
            return Page(b"busy", 503, {"Retry-After": "1"})
        return Page(b"<p>Open again</p>")

    shop.routes["/busy"] = once_busy
    llm.fail(429, retry_after=1)
    hook = [inbox.url("/hook")]
    publish(env, "check", {"url": shop.url("/kettle"), "selector": ".price", "rule": "price < 100", "notify": hook})
    publish(env, "check", {"url": shop.url("/stock"), "question": "Is the kettle in stock?", "notify": hook})
    publish(env, "check", {"url": shop.url("/gone")})
    publish(env, "check", {"url": shop.url("/busy")})
    publish(env, "check", b"not json")
    if CHROMIUM:
        shop.routes["/lamp"] = Page(LATE_PRICE, headers={"Content-Type": "text/html"})
        publish(env, "check", {"url": shop.url("/lamp"), "fetch": "browser", "wait_for": ".price.loaded"})


@needs_prometheus
def test_every_panel_shows_data_and_every_rule_evaluates(
    env: dict[str, str], llm: OpenAIServer, pipeline: JetStreamBroker, prometheus: Prometheus, tmp_path: Path
) -> None:
    with Site() as shop, Site() as inbox:
        load(env, llm, shop, inbox)
        assert wait_for(lambda: len(inbox.posts) == 2, 60), "the two alerts did not arrive"
        assert wait_for(lambda: [path for path, _ in shop.requests].count("/busy") == 2, 30), "the 503 was not retried"
    assert llm.count(429) == 1 and llm.count(200) == 1
    # Every counter must have been scraped twice since it moved, for rate() to see it.
    time.sleep(3)
    assert wait_for(lambda: prometheus.query('pipeline_alerts_total{outcome="sent"}'), 30)
    if CHROMIUM:
        # The suite's first browser may be the machine's first: a cold start reads Chromium from disk.
        rendered = wait_for(lambda: prometheus.query("pipeline_render_duration_seconds_count > 0"), 120)
        assert rendered, "no page rendered: " + (tmp_path / "workers.log").read_text()[-3000:]
    time.sleep(2)

    empty = []
    checked = 0
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            if panel["type"] == "row":
                continue
            for target in panel["targets"]:
                series = prometheus.query(target["expr"])
                if path.name == "jetstream.json":
                    continue  # evaluated, but fed by prometheus-nats-exporter: see the module's docstring
                if not CHROMIUM and "pipeline_render_" in target["expr"]:
                    continue  # evaluated, but no page could be rendered here
                checked += 1
                if not series:
                    empty.append(f"{path.stem}: {panel['title']}: {target['legendFormat']}")
    assert checked >= 30
    assert not empty, f"queries without data: {empty}"

    # The load's events, as the metrics tell them (series that merely exist at 0 would not do).
    def total(expr: str) -> float:
        return sum(float(series["value"][1]) for series in prometheus.query(expr))

    assert total('pipeline_llm_requests_total{outcome="rate_limited"}') == 1
    assert total('pipeline_llm_requests_total{outcome="ok"}') == 1
    assert total("pipeline_llm_cache_total") >= 2  # the call that got the 429, and its retry
    assert total('pipeline_fetch_errors_total{kind="http_status"}') == 1  # the 404
    assert total('pipeline_fetch_errors_total{kind="retry_later"}') == 1  # the 503
    assert total("dramatiq_message_retries_total") >= 2
    assert total('pipeline_alerts_total{outcome="sent"}') == 2
    assert total('pipeline_events_total{outcome="invalid"}') == 1
    if CHROMIUM:
        assert total('pipeline_render_browser_launches_total{reason="first"}') == 1
        assert total("pipeline_render_browser_memory_bytes") > 20e6  # a live browser, measured
    dead = [(letter.queue, letter.reason) for letter in list_dead(pipeline)]
    assert total('pipeline_dead_letters{queue="fetch"}') == 1, dead  # the 404

    # The dashboards use every metric the pipeline exports (beside the process and Python runtime's own).
    exported = {
        s["metric"]["__name__"] for s in prometheus.query('{job="pipeline", __name__=~"pipeline_.*|dramatiq_.*"}')
    }
    queries = " ".join(
        t["expr"] for path in DASHBOARDS for p in json.loads(path.read_text())["panels"] for t in p.get("targets", [])
    )
    base = re.compile(r"_(bucket|sum|count|created)$")  # a histogram's or counter's series share their name
    unused = sorted(name for name in exported if base.sub("", name) not in queries)
    assert not unused, f"exported but on no dashboard: {unused}"

    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            prometheus.query(rule["expr"])  # fails the test if Prometheus cannot evaluate it


def test_committed_dashboards_are_generated_from_the_code() -> None:
    rendered = load_script(ROOT / "grafana" / "dashboards.py").render()
    assert sorted(rendered) == [p.name for p in DASHBOARDS]
    for path in DASHBOARDS:
        assert rendered[path.name] == path.read_text(), f"{path.name} is stale: run python grafana/dashboards.py"
