"""The Kubernetes manifests: current, valid against Kubernetes' and KEDA's schemas, named as the code names things."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from pipeline.exporter import LAG_METRIC
from pipeline.names import DEFAULT_PREFIX, STAGES, QueueNames
from tests.conftest import ROOT

KEDA = ROOT / "autoscale" / "keda"
KEDA_CRDS = KEDA / "crds"  # KEDA v2.20.2's, as shared with the project
KUBERNETES = "1.33.0"


def _manifests_module() -> Any:
    import pipeline.manifests

    return pipeline.manifests


def committed_objects() -> list[dict]:
    objects = []
    for path in sorted((KEDA / "base").glob("*.yaml")) + sorted((KEDA / "overlays").glob("*/*.yaml")):
        if path.name != "kustomization.yaml":
            objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return objects


def keda_schema(kind: str) -> dict:
    plural = {"ScaledObject": "scaledobjects", "TriggerAuthentication": "triggerauthentications"}[kind]
    crd = yaml.safe_load((KEDA_CRDS / f"keda.sh_{plural}.yaml").read_text())
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return version["schema"]["openAPIV3Schema"]


def unknown_fields(value: Any, schema: dict, path: str = "") -> list[str]:
    """Fields the CRD does not define: the API server would drop them silently, so a typo would go unseen."""
    if isinstance(value, dict) and "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        found = [f"{path}.{key}" for key in value if key not in schema["properties"]]
        for key, item in value.items():
            if key in schema["properties"]:
                found += unknown_fields(item, schema["properties"][key], f"{path}.{key}")
        return found
    if isinstance(value, list) and "items" in schema:
        return [f for n, item in enumerate(value) for f in unknown_fields(item, schema["items"], f"{path}[{n}]")]
    return []


def test_committed_manifests_are_generated_from_the_code() -> None:
    for relative, text in _manifests_module().render().items():
        assert (KEDA / relative).read_text() == text, f"{relative} is stale: run pipeline manifests"


@pytest.mark.parametrize("prometheus", [False, True], ids=["nats-jetstream", "prometheus-overlay"])
def test_keda_objects_validate_against_kedas_crds(prometheus: bool) -> None:
    module = _manifests_module()
    objects = [o for o in committed_objects() if o["apiVersion"].startswith("keda.sh/")]
    if prometheus:  # what the overlay's patches produce
        objects = [module.scaled_object(stage, module.prometheus_trigger(stage)) for stage in STAGES]
    kinds = {o["kind"] for o in objects}
    assert "ScaledObject" in kinds and (not prometheus or kinds == {"ScaledObject"})
    for obj in objects:
        schema = keda_schema(obj["kind"])
        jsonschema.validate(obj, schema)
        assert not unknown_fields(obj, schema), f"{obj['metadata']['name']}: {unknown_fields(obj, schema)}"


def test_core_objects_validate_against_kubernetes_schemas() -> None:
    core = [o for o in committed_objects() if not o["apiVersion"].startswith("keda.sh/")]
    assert {o["kind"] for o in core} == {"ConfigMap", "Deployment"}
    for obj in core:
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)


def test_names_are_the_codes_names() -> None:
    objects = committed_objects()
    scaled = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ScaledObject"}
    deployments = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Deployment"}
    for stage in STAGES:
        names = QueueNames(DEFAULT_PREFIX, stage)
        [trigger] = scaled[f"pipeline-{stage}"]["spec"]["triggers"]
        assert trigger["type"] == "nats-jetstream"
        assert (trigger["metadata"]["stream"], trigger["metadata"]["consumer"]) == (names.stream, names.consumer)
        assert scaled[f"pipeline-{stage}"]["spec"]["scaleTargetRef"]["name"] == f"pipeline-{stage}"
        [container] = deployments[f"pipeline-{stage}"]["spec"]["template"]["spec"]["containers"]
        assert container["command"][:4] == ["dramatiq", "actors", "--queues", stage]
    patches = yaml.safe_load((KEDA / "overlays" / "prometheus" / "kustomization.yaml").read_text())["patches"]
    for stage, patch in zip(STAGES, patches, strict=True):
        [operation] = yaml.safe_load(patch["patch"])
        assert operation["value"][0]["metadata"]["query"] == f'max({LAG_METRIC}{{queue="{stage}"}})'


class HelmChartCluster:
    """What the official NATS Helm chart (nats-io/k8s, chart 1.x) creates for ``helm install nats nats/nats
    --namespace nats --set config.cluster.enabled=true --set config.jetstream.enabled=true``, from its templates:
    files/config/config.yaml (``server_name: $POD_NAME``), files/config/cluster.yaml (``no_advertise: true``,
    routes ``nats://<statefulset>-<i>.<headless service>:6222``), files/headless-service.yaml
    (``<fullname>-headless``), the StatefulSet's ``serviceName`` (the headless Service: one DNS name per pod)."""

    def __init__(self, release: str, namespace: str, replicas: int) -> None:
        self.headless = f"{release}-headless"
        self.pods = [f"{release}-{i}" for i in range(replicas)]
        self.namespace = namespace
        self.client_service = f"{release}.{namespace}.svc.cluster.local"

    def dns_names(self) -> set[str]:
        """The names cluster DNS resolves: each pod under the headless Service, and the two Services."""
        pods = {f"{pod}.{self.headless}.{self.namespace}.svc.cluster.local" for pod in self.pods}
        return pods | {self.client_service, f"{self.headless}.{self.namespace}.svc.cluster.local"}

    def varz(self, pod: str) -> dict[str, Any]:
        """What ``/varz`` says on one pod: no client URLs advertised, its name, the route URLs."""
        return {
            "connect_urls": [],
            "server_name": pod,
            "cluster": {"urls": [f"{p}.{self.headless}:6222" for p in self.pods]},
        }


def keda_leader_hosts(endpoint: str, varz: dict[str, Any]) -> list[str]:
    """The hosts KEDA's nats-jetstream scaler (pkg/scalers/nats_jetstream_scaler.go) asks for a consumer's
    leader on a cluster: without advertised client URLs, ``<node>.<endpoint>`` for the server's own name and
    for each route URL's first label (getNATSJetStreamMonitoringNodeURLByNode)."""
    assert not varz["connect_urls"], "with advertised client URLs KEDA asks those addresses instead"
    nodes = [varz["server_name"], *varz["cluster"]["urls"]]
    return [f"{node.split('.')[0]}.{endpoint.split(':')[0]}" for node in nodes]


def test_keda_finds_every_consumer_leader_on_the_charts_clustered_nats() -> None:
    objects = committed_objects()
    chart = HelmChartCluster("nats", "nats", 3)
    configmap = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "pipeline-config")
    assert configmap["data"]["PIPELINE_NATS_URL"] == f"nats://{chart.client_service}:4222"
    assert configmap["data"]["PIPELINE_NATS_REPLICAS"] == "3"  # every stream on the three servers
    for scaled in (o for o in objects if o["kind"] == "ScaledObject"):
        endpoint = scaled["spec"]["triggers"][0]["metadata"]["natsServerMonitoringEndpoint"]
        assert endpoint.split(":")[0] in chart.dns_names() and endpoint.endswith(":8222")
        for pod in chart.pods:  # whichever pod the Service's name reaches first
            hosts = keda_leader_hosts(endpoint, chart.varz(pod))
            assert set(hosts) <= chart.dns_names(), f"KEDA would ask hosts that do not resolve: {hosts}"
            assert {h.split(".")[0] for h in hosts} == set(chart.pods)  # every server, so every leader, is asked
    # The client Service, as shipped before, sends KEDA to names that resolve to nothing:
    assert not set(keda_leader_hosts(f"{chart.client_service}:8222", chart.varz("nats-0"))) <= chart.dns_names()


def test_no_secret_is_inline() -> None:
    for obj in committed_objects():
        assert obj["kind"] != "Secret", "secrets are created by the user, never committed"
        for container in obj.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            for variable in container.get("env", []):
                if any(word in variable["name"] for word in ("SECRET", "KEY", "DATABASE_URL", "PASSWORD")):
                    assert "secretKeyRef" in variable.get("valueFrom", {}), variable["name"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed: kustomize builds not checked")
@pytest.mark.parametrize("directory", ["base", "overlays/prometheus"])
def test_kustomize_builds_and_the_result_validates(directory: str) -> None:
    built = subprocess.run(["kubectl", "kustomize", str(KEDA / directory)], capture_output=True, text=True, check=True)
    objects = [doc for doc in yaml.safe_load_all(built.stdout) if doc]
    assert len([o for o in objects if o["kind"] == "ScaledObject"]) == len(STAGES)
    for obj in objects:
        if obj["apiVersion"].startswith("keda.sh/"):
            jsonschema.validate(obj, keda_schema(obj["kind"]))
        else:
            kubernetes_validate.validate(obj, KUBERNETES, strict=True)
    triggers = {o["spec"]["triggers"][0]["type"] for o in objects if o["kind"] == "ScaledObject"}
    assert triggers == ({"prometheus"} if "prometheus" in directory else {"nats-jetstream"})


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed: kustomize builds not checked")
def test_the_readmes_deployment_kustomization_builds(tmp_path) -> None:
    """The deployment guide's own kustomization, as a user would copy it: every workload gets the image and
    the namespace."""
    readme = (ROOT / "docs" / "autoscaling.md").read_text()
    block = readme.split("# deploy/kustomization.yaml\n", 1)[1].split("```", 1)[0]
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    base = os.path.relpath(KEDA / "base", deploy)  # kustomize takes no absolute paths
    (deploy / "kustomization.yaml").write_text(block.replace("../autoscale/keda/base", base))
    built = subprocess.run(["kubectl", "kustomize", str(deploy)], capture_output=True, text=True, check=True)
    objects = [doc for doc in yaml.safe_load_all(built.stdout) if doc]
    assert {o["metadata"].get("namespace") for o in objects} == {"pipeline"}
    images = {
        container["image"]
        for o in objects
        if o["kind"] == "Deployment"
        for container in o["spec"]["template"]["spec"]["containers"]
    }
    assert images == {"registry.example.com/nats-ai-pipeline:1"}


def test_every_stage_ends_a_message_within_a_scale_downs_grace(nats_server, prefix: str) -> None:
    """A scaled-down worker gets SHUTDOWN_SECONDS to finish: a time limit under it means nothing is cut short."""
    code = (
        "import json, actors; "
        "print(json.dumps({a.queue_name: a.options.get('time_limit') for a in actors.broker.actors.values()}))"
    )
    env = dict(os.environ, PIPELINE_NATS_URL=nats_server.url, PIPELINE_PREFIX=prefix)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=ROOT)
    limits = json.loads(out.stdout.splitlines()[-1])
    assert set(limits) == set(STAGES)
    shutdown_ms = _manifests_module().SHUTDOWN_SECONDS * 1000
    assert all(limit is not None and limit < shutdown_ms for limit in limits.values()), limits
