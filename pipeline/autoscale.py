"""KEDA's scaling policy, read from the ScaledObjects and applied on one machine.

On a cluster KEDA turns a stage's lag into a replica count for the HPA; here
the same numbers decide how many worker processes each pool runs.  The
rules are KEDA's and the HPA's, so one file sets the policy for both:

- **activation**: a pool at zero starts when the lag exceeds
  ``activationLagThreshold``; with the lag at or under it for
  ``cooldownPeriod`` seconds, a pool whose ``minReplicaCount`` is 0 goes
  back to zero;
- **desired** = ``ceil(lag / lagThreshold)``, kept as it is while
  ``lag / (replicas * lagThreshold)`` is within 10% of 1 (the HPA's
  tolerance), clamped to ``[minReplicaCount, maxReplicaCount]``;
- **scale-down stabilisation**: the highest recommendation of the last
  ``stabilizationWindowSeconds`` wins, so a dip does not shed workers;
- **rate policies**: at most ``value`` pods (or percent) more or fewer per
  ``periodSeconds``, the most permissive policy of each direction, as the HPA does.

:class:`Scaler` is pure (the clock is passed in, so tests drive it);
:class:`Autoscaler` polls each queue's lag and resizes its pool.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import yaml

from pipeline.service import BackgroundService

logger = logging.getLogger(__name__)

#: The HPA's default tolerance around the target.
TOLERANCE = 0.1


@dataclass(frozen=True)
class RatePolicy:
    kind: str  # "Pods" or "Percent"
    value: int
    period: float

    def limit(self, replicas: int) -> int:
        """How many replicas this policy lets change in one period, from ``replicas``."""
        return self.value if self.kind == "Pods" else max(1, math.ceil(replicas * self.value / 100))


@dataclass(frozen=True)
class Policy:
    """One stage's scaling numbers, as its ScaledObject states them."""

    queue: str
    min_replicas: int = 0
    max_replicas: int = 100
    lag_threshold: float = 5.0
    activation_lag: float = 0.0
    cooldown: float = 300.0
    polling: float = 30.0
    down_window: float = 300.0
    up_policies: tuple[RatePolicy, ...] = ()
    down_policies: tuple[RatePolicy, ...] = ()
    # One replica, as the stage's Deployment runs it:
    processes: int = 1
    threads: int = 8
    shutdown_timeout: float = 100.0

    @classmethod
    def from_scaled_object(cls, obj: dict[str, Any]) -> Policy:
        spec = obj["spec"]
        [trigger] = [t for t in spec["triggers"] if t["type"] in ("nats-jetstream", "prometheus")]
        meta = trigger["metadata"]
        threshold = float(meta.get("lagThreshold") or meta.get("threshold") or 5)
        activation = float(meta.get("activationLagThreshold") or meta.get("activationThreshold") or 0)
        behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior", {})

        def policies(direction: str) -> tuple[RatePolicy, ...]:
            rules = behavior.get(direction, {}).get("policies", [])
            return tuple(RatePolicy(p["type"], int(p["value"]), float(p["periodSeconds"])) for p in rules)

        name = obj["metadata"]["name"]
        return cls(
            queue=name.removeprefix("pipeline-"),
            min_replicas=int(spec.get("minReplicaCount", 0)),
            max_replicas=int(spec.get("maxReplicaCount", 100)),
            lag_threshold=threshold,
            activation_lag=activation,
            cooldown=float(spec.get("cooldownPeriod", 300)),
            polling=float(spec.get("pollingInterval", 30)),
            down_window=float(behavior.get("scaleDown", {}).get("stabilizationWindowSeconds", 300)),
            up_policies=policies("scaleUp"),
            down_policies=policies("scaleDown"),
        )

    def with_replica(self, command: list[str]) -> Policy:
        """This policy with a replica's processes, threads and shutdown timeout from its ``dramatiq`` command."""
        options = dict(itertools.pairwise(command))
        return replace(
            self,
            processes=int(options.get("--processes", self.processes)),
            threads=int(options.get("--threads", self.threads)),
            shutdown_timeout=int(options.get("--worker-shutdown-timeout", self.shutdown_timeout * 1000)) / 1000,
        )


def default_manifests() -> Path:
    """The KEDA base beside the package (a checkout or an editable install): ``autoscale/keda/base``."""
    return Path(__file__).resolve().parents[1] / "autoscale" / "keda" / "base"


def load_policies(directory: Path) -> dict[str, Policy]:
    """Every ScaledObject in the YAML files of ``directory`` (the KEDA base), by queue.

    The Deployment a ScaledObject targets says what one replica is
    (``--processes``, ``--threads``, ``--worker-shutdown-timeout``).
    """
    if not directory.is_dir():
        raise FileNotFoundError(f"no KEDA manifests at {directory} (the autoscaling policy is read from them)")
    documents = [
        document
        for path in sorted(directory.glob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text())
        if document
    ]
    commands = {
        document["metadata"]["name"]: document["spec"]["template"]["spec"]["containers"][0].get("command", [])
        for document in documents
        if document.get("kind") == "Deployment"
    }
    found = {}
    for document in documents:
        if document.get("kind") == "ScaledObject":
            policy = Policy.from_scaled_object(document)
            target = document["spec"]["scaleTargetRef"]["name"]
            found[policy.queue] = policy.with_replica(commands.get(target, []))
    if not found:
        raise ValueError(f"no ScaledObject in {directory}")
    return found


@dataclass
class Scaler:
    """The replica count of one pool over time: feed it the lag at each poll, it says how many to run."""

    policy: Policy
    replicas: int = 0
    _last_active: float = -math.inf
    _recommendations: deque[tuple[float, int]] = field(default_factory=deque)
    _changes: deque[tuple[float, int]] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.replicas = max(self.replicas, self.policy.min_replicas)

    def decide(self, lag: int, now: float) -> int:
        """The pool's size from now on, given its lag."""
        policy = self.policy
        if lag > policy.activation_lag:
            self._last_active = now
        if self.replicas == 0 and lag <= policy.activation_lag:
            return 0  # not active: stays at zero
        if policy.min_replicas == 0 and now - self._last_active >= policy.cooldown:
            self._recommendations.clear()
            return self._set(0, now)
        recommended = self._recommend(lag)
        self._recommendations.append((now, recommended))
        while self._recommendations and self._recommendations[0][0] < now - policy.down_window:
            self._recommendations.popleft()
        if recommended < self.replicas:  # stabilised: the highest recommendation in the window
            recommended = min(self.replicas, max(r for _, r in self._recommendations))
        return self._set(self._rate_limited(recommended, now), now)

    def _recommend(self, lag: int) -> int:
        policy = self.policy
        floor = max(policy.min_replicas, 1)
        if self.replicas > 0:
            ratio = lag / (self.replicas * policy.lag_threshold)
            if abs(ratio - 1) <= TOLERANCE:
                return min(max(self.replicas, floor), policy.max_replicas)
        return min(max(math.ceil(lag / policy.lag_threshold), floor), policy.max_replicas)

    def _rate_limited(self, target: int, now: float) -> int:
        policies = self.policy.up_policies if target > self.replicas else self.policy.down_policies
        if not policies or target == self.replicas:
            return target
        allowed = 0
        for rate in policies:  # the most permissive policy wins, as in the HPA
            since = now - rate.period
            moved = sum(
                abs(delta) for at, delta in self._changes if at > since and (delta > 0) == (target > self.replicas)
            )
            allowed = max(allowed, rate.limit(self.replicas) - moved)
        step = max(0, allowed)
        return min(target, self.replicas + step) if target > self.replicas else max(target, self.replicas - step)

    def _set(self, replicas: int, now: float) -> int:
        if replicas != self.replicas:
            self._changes.append((now, replicas - self.replicas))
            while self._changes and self._changes[0][0] < now - 600:
                self._changes.popleft()
            self.replicas = replicas
        return replicas


class Pool(Protocol):
    """What the autoscaler resizes: :class:`pipeline.workers.WorkerPool`."""

    queue: str

    def resize(self, size: int) -> None: ...


class Autoscaler(BackgroundService):
    """Every polling interval, each pool's size from its queue's lag, by its ScaledObject's rules.

    A pool shrinks by SIGTERM to the processes it drops: they finish their
    messages and hand the prefetched ones back, so nothing is lost or run twice.
    """

    def __init__(
        self,
        lag: Callable[[set[str]], Mapping[str, int]],
        pools: Mapping[str, Pool],
        policies: Mapping[str, Policy],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.lag = lag
        self.pools = dict(pools)
        self.scalers = {queue: Scaler(policies[queue]) for queue in self.pools}
        self.clock = clock
        self.interval = min(policies[queue].polling for queue in self.pools)

    def step(self) -> dict[str, int]:
        """Read the lag once and resize every pool; returns the sizes."""
        lags = self.lag(set(self.pools))
        now = self.clock()
        sizes = {}
        for queue, pool in self.pools.items():
            before = self.scalers[queue].replicas
            sizes[queue] = self.scalers[queue].decide(lags.get(queue, 0), now)
            if sizes[queue] != before:
                logger.info("%s: %d -> %d replicas (lag %d)", queue, before, sizes[queue], lags.get(queue, 0))
            pool.resize(sizes[queue])
        return sizes

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.step()
            except Exception:  # NATS away for a moment: keep the pools as they are, try again
                logger.warning("Autoscaling step failed; pools keep their size.", exc_info=True)
            self.stop_event.wait(self.interval)
