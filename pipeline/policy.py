"""The scaling policy of each stage: the one table, for the cluster (KEDA) and one machine alike.

``pipeline manifests`` renders the Kubernetes Deployments and KEDA
ScaledObjects from it (``autoscale/keda/``), and ``pipeline up`` and
``pipeline autoscale`` size their worker pools by it.  A manifests
directory (``--manifests DIR``) overrides it, for a cluster's own edits.

The three time limits below are one contract: a message's time limit is
under what a scaled-down worker is given to finish, which is under the pod's
grace period, so a scale-down never cuts a message short.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.names import STAGES


@dataclass(frozen=True)
class StagePolicy:
    """One stage: a replica (processes times threads, its resources) and how many replicas for how much lag."""

    processes: int
    threads: int
    min_replicas: int
    max_replicas: int
    lag_threshold: int  # KEDA's lagThreshold: messages per replica
    cpu: str
    memory: str


#: Per stage: fetch waits on the network, scrape burns CPU, analyse waits on a rate-limited LLM, alert on webhooks.
#: A fetch thread only parks while its process's event loop holds its requests (pipeline.fetcher), and a fetch
#: message carries up to 16 checks when the ingest pulls several events at once (pipeline.stages.fetch_batch),
#: so a fetch replica holds up to 512 requests in flight: slow sites cost waiting, not CPU.  Lag is in messages,
#: and under load every stage's messages carry up to 16 checks (pipeline.batching): fetch's 20 is up to 320.
#: Two processes of 16 threads, not one of 32: a fast site's check is CPU (HTTP, hashing, the message), and
#: one process's threads share one interpreter lock.
STAGE_POLICIES = {
    "fetch": StagePolicy(
        processes=2, threads=16, min_replicas=1, max_replicas=20, lag_threshold=20, cpu="500m", memory="512Mi"
    ),
    # A browser is the costliest thing a worker runs: few pages per process, more memory, fewer replicas.
    "render": StagePolicy(
        processes=1, threads=4, min_replicas=0, max_replicas=4, lag_threshold=20, cpu="1", memory="2Gi"
    ),
    "scrape": StagePolicy(
        processes=2, threads=2, min_replicas=1, max_replicas=10, lag_threshold=100, cpu="1", memory="512Mi"
    ),
    "analyse": StagePolicy(
        processes=1, threads=8, min_replicas=0, max_replicas=8, lag_threshold=50, cpu="250m", memory="256Mi"
    ),
    "alert": StagePolicy(
        processes=1, threads=8, min_replicas=0, max_replicas=5, lag_threshold=50, cpu="100m", memory="128Mi"
    ),
}
assert set(STAGE_POLICIES) == set(STAGES)

#: KEDA's cooldown from one replica to zero, and how often it reads the lag (seconds).
COOLDOWN_SECONDS = 120
POLLING_SECONDS = 5
#: The HPA's behaviour: grow by up to 4 replicas per 15 s at once; shrink by half per 30 s after 120 s of less lag.
SCALE_UP = {"type": "Pods", "value": 4, "periodSeconds": 15}
SCALE_DOWN = {"type": "Percent", "value": 50, "periodSeconds": 30}
SCALE_DOWN_WINDOW_SECONDS = 120

#: The longest one message may run (Dramatiq's time limit on every stage actor) ...
TIME_LIMIT_SECONDS = 90
#: ... under what a worker is given to finish its messages after SIGTERM ...
SHUTDOWN_SECONDS = 100
#: ... under the pod's grace period before Kubernetes kills it.
GRACE_SECONDS = 120
assert TIME_LIMIT_SECONDS < SHUTDOWN_SECONDS < GRACE_SECONDS
