"""A three-node NATS cluster: one setting gives every asset three replicas; the pipeline rides out server loss."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline import runtime
from pipeline.broker import JetStreamBroker
from pipeline.cli import app
from pipeline.ingest import Ingest
from pipeline.llm.cache import VerdictCache
from pipeline.names import STAGES
from pipeline.nats_server import NatsCluster
from pipeline.rules import Verdict
from pipeline.settings import configure, current


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    with NatsCluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


@pytest.fixture
def on_cluster(cluster: NatsCluster, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("PIPELINE_NATS_URL", cluster.url)
    monkeypatch.setenv("PIPELINE_PREFIX", prefix)
    monkeypatch.setenv("PIPELINE_DATABASE_URL", f"sqlite:///{tmp_path / 'pipeline.db'}")
    runtime.reset()
    yield
    runtime.reset()


def use_every_asset(broker: JetStreamBroker) -> None:
    """What a running pipeline creates: stage streams, dead letters, events, both KV buckets, the object store."""
    for stage in STAGES:
        broker.declare_queue(stage)
    broker.lag(set(STAGES))  # streams are created on first use
    context = runtime.context(broker)
    Ingest(broker, context).declare()
    context.bodies.put(b"<p>a body</p>")
    assert context.politeness is not None
    context.politeness.wait_for("example.com")
    VerdictCache(broker).put("k", Verdict(True, "info", "yes"))


EXPECTED_KINDS = {"stream": 6, "kv": 2, "objects": 1}  # 4 stages, dead letters, events; ratelimit, verdicts; bodies


def test_one_setting_gives_every_asset_three_replicas(on_cluster: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_NATS_REPLICAS", "3")
    broker = JetStreamBroker(prefix=current().prefix)
    try:
        use_every_asset(broker)
        assets = broker.assets()
    finally:
        broker.close()
    assert {kind: sum(a.kind == kind for a in assets) for kind in EXPECTED_KINDS} == EXPECTED_KINDS
    assert all(a.replicas == 3 and a.leader for a in assets), assets
    result = CliRunner().invoke(app, ["status", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)["assets"]
    assert len(shown) == len(assets) and {a["replicas"] for a in shown} == {3}
    assert {a["leader"] for a in shown} <= {"n0", "n1", "n2"}


def test_raising_the_setting_updates_the_existing_assets(on_cluster: None, monkeypatch: pytest.MonkeyPatch) -> None:
    broker = JetStreamBroker(prefix=current().prefix)  # PIPELINE_NATS_REPLICAS unset: 1
    try:
        use_every_asset(broker)
        assert {a.replicas for a in broker.assets()} == {1}
    finally:
        broker.close()
    runtime.reset()
    monkeypatch.setenv("PIPELINE_NATS_REPLICAS", "3")
    configure(None)
    broker = JetStreamBroker(prefix=current().prefix)
    try:
        use_every_asset(broker)
        assets = broker.assets()
    finally:
        broker.close()
    assert len(assets) == sum(EXPECTED_KINDS.values())
    assert {a.replicas for a in assets} == {3}, assets
