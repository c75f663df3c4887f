"""The Kubernetes manifests, rendered from the code: ``pipeline manifests`` writes ``autoscale/keda/``.

Stream, consumer and metric names come from :mod:`pipeline` (imported, never
retyped), and each stage's scaling policy from :mod:`pipeline.policy`, the
table the autoscaler on one machine uses too.  The files are committed and a
test fails when they are stale, so ``kubectl apply -k`` never needs Python.

- ``base/``: per stage a Deployment of ``dramatiq actors --queues <stage>``
  and a ScaledObject with the ``nats-jetstream`` trigger on that stage's
  stream and consumer; the scheduler and exporter Deployments; the
  ConfigMap of settings.  Secrets come from the Secret ``pipeline-secrets``,
  which you create (README), never from a file here.
- ``overlays/prometheus/``: the same policy on KEDA's ``prometheus`` trigger
  over ``pipeline_queue_lag``, with a TriggerAuthentication whose bearer
  token comes from the Secret ``pipeline-prometheus``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipeline.names import DEFAULT_PREFIX, LAG_METRIC, STAGES, QueueNames
from pipeline.policy import (
    COOLDOWN_SECONDS,
    GRACE_SECONDS,
    POLLING_SECONDS,
    SCALE_DOWN,
    SCALE_DOWN_WINDOW_SECONDS,
    SCALE_UP,
    SHUTDOWN_SECONDS,
    STAGE_POLICIES,
)

#: Where the rendered files live in a checkout.
DEFAULT_DIRECTORY = Path("autoscale/keda")
IMAGE = "nats-ai-pipeline:latest"
#: NATS as the official Helm chart (nats-io/k8s, release ``nats`` in namespace ``nats``) runs it in cluster mode:
#: a StatefulSet ``nats`` whose pods ``nats-<i>`` are also their servers' names (``server_name: $POD_NAME``),
#: a client Service ``nats`` and a headless Service ``nats-headless`` that gives each pod a DNS name.
NATS_RELEASE, NATS_NAMESPACE, NATS_CLUSTER_SIZE = "nats", "nats", 3
NATS_CLIENT_URL = f"nats://{NATS_RELEASE}.{NATS_NAMESPACE}.svc.cluster.local:4222"
#: On a cluster only the consumer's leader reports its lag.  KEDA's nats-jetstream scaler finds it by asking
#: this endpoint for the servers' names (the chart sets ``no_advertise``, so it uses ``server_name``) and then
#: asks ``<server_name>.<this endpoint>``: the headless Service, under which ``nats-0.nats-headless...``
#: resolves to the pod.  The client Service (``nats.nats.svc...``) would give names that resolve to nothing.
NATS_MONITORING = f"{NATS_RELEASE}-headless.{NATS_NAMESPACE}.svc.cluster.local:8222"
#: Streams, KV buckets and the object store on three servers (``PIPELINE_NATS_REPLICAS``).
NATS_REPLICAS = NATS_CLUSTER_SIZE
PROMETHEUS = "http://prometheus-operated.monitoring.svc:9090"
METRICS_PORT = 9191


def labels(name: str, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/component": component}


def environment(*, worker: bool) -> list[dict[str, Any]]:
    secrets = [
        ("PIPELINE_DATABASE_URL", "database-url", False),
        ("PIPELINE_WEBHOOK_SECRET", "webhook-secret", False),
        ("PIPELINE_OPENAI_API_KEYS", "openai-api-keys", True),
    ]
    env: list[dict[str, Any]] = [
        {"name": name, "valueFrom": {"secretKeyRef": {"name": "pipeline-secrets", "key": key, "optional": optional}}}
        for name, key, optional in secrets
    ]
    if worker:
        env += [
            {"name": "dramatiq_prom_port", "value": str(METRICS_PORT)},
            {"name": "dramatiq_prom_db", "value": "/tmp/metrics"},
            {"name": "PROMETHEUS_MULTIPROC_DIR", "value": "/tmp/metrics"},
        ]
    return env


def deployment(name: str, component: str, command: list[str], port: int, resources: dict, *, worker: bool) -> dict:
    probe = {"httpGet": {"path": "/metrics", "port": "metrics"}, "periodSeconds": 10}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels(name, component)},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {
                "metadata": {
                    "labels": labels(name, component),
                    "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": str(port)},
                },
                "spec": {
                    # SIGTERM: workers finish their messages (up to SHUTDOWN_SECONDS) and hand back the prefetched.
                    "terminationGracePeriodSeconds": GRACE_SECONDS,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001},
                    "containers": [
                        {
                            "name": component,
                            "image": IMAGE,
                            "command": command,
                            "envFrom": [{"configMapRef": {"name": "pipeline-config"}}],
                            "env": environment(worker=worker),
                            "ports": [{"name": "metrics", "containerPort": port}],
                            "readinessProbe": {**probe, "initialDelaySeconds": 5},
                            "livenessProbe": {**probe, "initialDelaySeconds": 30, "failureThreshold": 6},
                            "resources": resources,
                            "volumeMounts": [
                                {"name": "metrics", "mountPath": "/tmp/metrics"},
                                {"name": "work", "mountPath": "/data"},
                            ],
                        }
                    ],
                    "volumes": [{"name": "metrics", "emptyDir": {}}, {"name": "work", "emptyDir": {}}],
                },
            },
        },
    }


def worker_deployment(stage: str) -> dict:
    policy = STAGE_POLICIES[stage]
    command = ["dramatiq", "actors", "--queues", stage, "--processes", str(policy.processes),
               "--threads", str(policy.threads), "--worker-shutdown-timeout", str(SHUTDOWN_SECONDS * 1000)]  # fmt: skip
    resources = {"requests": {"cpu": policy.cpu, "memory": policy.memory}, "limits": {"memory": policy.memory}}
    return deployment(f"pipeline-{stage}", stage, command, METRICS_PORT, resources, worker=True)


def scaled_object(stage: str, trigger: dict) -> dict:
    policy = STAGE_POLICIES[stage]
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": f"pipeline-{stage}", "labels": labels(f"pipeline-{stage}", stage)},
        "spec": {
            "scaleTargetRef": {"name": f"pipeline-{stage}"},
            "pollingInterval": POLLING_SECONDS,
            "cooldownPeriod": COOLDOWN_SECONDS,
            "minReplicaCount": policy.min_replicas,
            "maxReplicaCount": policy.max_replicas,
            "fallback": {"failureThreshold": 3, "replicas": max(1, policy.min_replicas)},
            "advanced": {
                "horizontalPodAutoscalerConfig": {
                    "behavior": {
                        "scaleDown": {
                            "stabilizationWindowSeconds": SCALE_DOWN_WINDOW_SECONDS,
                            "policies": [SCALE_DOWN],
                        },
                        "scaleUp": {
                            "stabilizationWindowSeconds": 0,
                            "policies": [SCALE_UP],
                        },
                    }
                }
            },
            "triggers": [trigger],
        },
    }


def jetstream_trigger(stage: str) -> dict:
    names = QueueNames(DEFAULT_PREFIX, stage)
    return {
        "type": "nats-jetstream",
        "metadata": {
            "natsServerMonitoringEndpoint": NATS_MONITORING,
            "account": "$G",
            "stream": names.stream,
            "consumer": names.consumer,
            "lagThreshold": str(STAGE_POLICIES[stage].lag_threshold),
            "activationLagThreshold": "0",
            "useHttps": "false",
        },
    }


def prometheus_trigger(stage: str) -> dict:
    return {
        "type": "prometheus",
        "metadata": {
            "serverAddress": PROMETHEUS,
            "query": f'max({LAG_METRIC}{{queue="{stage}"}})',
            "threshold": str(STAGE_POLICIES[stage].lag_threshold),
            "activationThreshold": "0",
            "authModes": "bearer",
        },
        "authenticationRef": {"name": "pipeline-prometheus"},
    }


def base() -> dict[str, Any]:
    files: dict[str, Any] = {
        "configmap.yaml": {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "pipeline-config"},
            "data": {
                "PIPELINE_NATS_URL": NATS_CLIENT_URL,
                "PIPELINE_NATS_REPLICAS": str(NATS_REPLICAS),
                "PIPELINE_PREFIX": DEFAULT_PREFIX,
            },
        },
        "scheduler.yaml": deployment("pipeline-scheduler", "scheduler", ["pipeline", "scheduler", "--port", "9465"],
                                     9465, {"requests": {"cpu": "100m", "memory": "256Mi"}}, worker=False),
        "exporter.yaml": deployment("pipeline-exporter", "exporter", ["pipeline", "exporter", "--port", "9464"],
                                    9464, {"requests": {"cpu": "50m", "memory": "128Mi"}}, worker=False),
    }  # fmt: skip
    for stage in STAGES:
        files[f"{stage}.yaml"] = [worker_deployment(stage), scaled_object(stage, jetstream_trigger(stage))]
    files["kustomization.yaml"] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "labels": [{"pairs": {"app.kubernetes.io/part-of": "nats-ai-pipeline"}}],
        "resources": sorted(name for name in files if name != "kustomization.yaml"),
    }
    return files


def prometheus_overlay() -> dict[str, Any]:
    patches = []
    for stage in STAGES:
        replace = [{"op": "replace", "path": "/spec/triggers", "value": [prometheus_trigger(stage)]}]
        patches.append(
            {"target": {"kind": "ScaledObject", "name": f"pipeline-{stage}"}, "patch": yaml.safe_dump(replace)}
        )
    return {
        "trigger-authentication.yaml": {
            "apiVersion": "keda.sh/v1alpha1",
            "kind": "TriggerAuthentication",
            "metadata": {"name": "pipeline-prometheus"},
            "spec": {"secretTargetRef": [{"parameter": "bearerToken", "name": "pipeline-prometheus", "key": "token"}]},
        },
        "kustomization.yaml": {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": ["../../base", "trigger-authentication.yaml"],
            "patches": patches,
        },
    }


def render() -> dict[str, str]:
    """Relative path -> YAML text of every manifest file."""
    out = {}
    for directory, files in (("base", base()), ("overlays/prometheus", prometheus_overlay())):
        for name, content in files.items():
            documents = content if isinstance(content, list) else [content]
            header = "# Generated by `pipeline manifests` from pipeline/policy.py and the code's names: edit those.\n"
            out[f"{directory}/{name}"] = header + yaml.safe_dump_all(documents, sort_keys=False)
    return out


def write(directory: Path = DEFAULT_DIRECTORY) -> list[Path]:
    """Write every manifest file under ``directory``; the paths written."""
    written = []
    for path, text in render().items():
        target = directory / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        written.append(target)
    return written
