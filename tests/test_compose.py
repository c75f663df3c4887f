"""The compose stack as files: valid Compose, every stage a scalable service, Prometheus and Grafana wired to it."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml
from compose_spec import PyCompose

from pipeline.names import STAGES
from tests.conftest import ROOT

COMPOSE = ROOT / "compose" / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    # YAML merge keys (<<) are resolved first, as docker compose does; then the Compose specification decides.
    document = yaml.safe_load(COMPOSE.read_text())
    PyCompose.from_yaml(yaml.safe_dump(document))  # raises on anything the specification does not allow
    return document


def test_every_stage_is_a_service_that_scales(compose: dict) -> None:
    services = compose["services"]
    for stage in STAGES:
        service = services[stage]
        assert service["command"][:4] == ["dramatiq", "actors", "--queues", stage]
        assert "ports" not in service and "container_name" not in service, "`--scale` needs neither"
        assert service["environment"]["dramatiq_prom_port"] == "9191"
    assert {"nats", "nats-exporter", "postgres", "prometheus", "grafana", "scheduler", "exporter"} <= set(services)
    assert services["exporter"]["command"][:2] == ["pipeline", "exporter"]
    assert "PROMETHEUS_MULTIPROC_DIR" not in services["exporter"]["environment"]
    for name in (*STAGES, "scheduler"):  # every container signs and ingests with the same secret, from .env
        assert services[name]["environment"]["PIPELINE_WEBHOOK_SECRET"].startswith("${PIPELINE_WEBHOOK_SECRET:?")
    for stage in STAGES:  # a fresh metrics directory per container start: no stale files of dead processes
        assert services[stage]["tmpfs"] == ["/tmp/metrics"]


def test_prometheus_finds_every_stage_and_the_nats_exporter() -> None:
    config = yaml.safe_load((ROOT / "compose" / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    [dns] = jobs["pipeline-workers"]["dns_sd_configs"]
    assert sorted(dns["names"]) == sorted(STAGES) and dns["port"] == 9191
    assert jobs["nats"]["static_configs"][0]["targets"] == ["nats-exporter:7777"]
    assert jobs["pipeline-exporter"]["static_configs"][0]["targets"] == ["exporter:9464"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus)")
def test_prometheus_config_is_valid() -> None:
    result = subprocess.run(
        ["promtool", "check", "config", "prometheus.yml"],
        cwd=ROOT / "compose" / "prometheus",
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_is_provisioned_with_the_datasource_the_dashboards_use(compose: dict) -> None:
    datasource = yaml.safe_load((ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    [source] = datasource["datasources"]
    provider = yaml.safe_load((ROOT / "grafana" / "provisioning" / "dashboards" / "pipeline.yml").read_text())
    [files] = provider["providers"]
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"../grafana/dashboards:{files['options']['path']}:ro" in mounts
    assert source["url"] == "http://prometheus:9090"
    for path in (ROOT / "grafana" / "dashboards").glob("*.json"):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                assert target["datasource"]["uid"] == source["uid"], f"{path.name}: {panel['title']}"


def test_a_stage_container_runs_what_its_kubernetes_deployment_runs(compose: dict) -> None:
    """One replica shape per stage, the KEDA manifests': compose does not keep a copy of its own."""
    from pipeline.autoscale import load_policies

    for stage, policy in load_policies(ROOT / "autoscale" / "keda" / "base").items():
        command = compose["services"][stage]["command"]
        options = dict(zip(command[2::2], command[3::2], strict=True))
        assert options == {
            "--queues": stage,
            "--processes": str(policy.processes),
            "--threads": str(policy.threads),
            "--worker-shutdown-timeout": str(int(policy.shutdown_timeout * 1000)),
        }, stage
