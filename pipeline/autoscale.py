"""KEDA's scaling rules, applied on one machine to the policy of ``pipeline.policy``.

On a cluster KEDA turns a stage's lag into a replica count for the HPA; here
the same numbers (the ScaledObjects ``pipeline manifests`` renders from the
table, or a directory of your own given with ``--manifests``) decide how many
worker processes each pool runs.  The rules are KEDA's and the HPA's
(``pkg/controller/podautoscaler`` in Kubernetes), so one table sets the
policy for both:

- **activation** (KEDA): a pool at zero goes to ``max(minReplicaCount, 1)``
  when the lag exceeds ``activationLagThreshold``; with the lag at or under
  it for ``cooldownPeriod`` seconds, a pool whose ``minReplicaCount`` is 0
  goes back to zero.  In between, the HPA's rules decide:
- **desired** = ``ceil(lag / lagThreshold)``, kept as it is while
  ``lag / (replicas * lagThreshold)`` is within 10% of 1 (the HPA's
  tolerance), clamped to ``[max(minReplicaCount, 1), maxReplicaCount]``;
- **stabilisation**: scaling down goes only to the highest recommendation
  of the last ``scaleDown.stabilizationWindowSeconds``, scaling up only to
  the lowest of the last ``scaleUp.stabilizationWindowSeconds``;
- **rate policies**: from the size at the start of each policy's
  ``periodSeconds``, at most ``value`` pods (or percent) more or fewer; of
  several policies ``selectPolicy`` picks the largest change (``Max``, the
  default), the smallest (``Min``) or none (``Disabled``).  A direction
  the ScaledObject leaves out gets the HPA's defaults.

One difference: the HPA re-evaluates every 15 s (its controller's sync
period), this loop every ``pollingInterval`` (5 s here), so a pool on one
machine reacts up to 10 s sooner than a Deployment.

:class:`Scaler` is pure (the clock is passed in, so tests drive it);
:class:`Autoscaler` polls each queue's lag and resizes its pool.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import yaml

from pipeline.machine import fit
from pipeline.members import share
from pipeline.outage import Outage
from pipeline.service import BackgroundService

logger = logging.getLogger(__name__)

#: The HPA's default tolerance around the target.
TOLERANCE = 0.1
#: KEDA's default ``lagThreshold`` of the nats-jetstream scaler.
DEFAULT_LAG_THRESHOLD = 10.0


@dataclass(frozen=True)
class RatePolicy:
    kind: str  # "Pods" or "Percent"
    value: int
    period: float

    def up_limit(self, period_start: int) -> int:
        """The most replicas this policy allows, from the size at the start of its period."""
        if self.kind == "Pods":
            return period_start + self.value
        return math.ceil(period_start * (1 + self.value / 100))

    def down_limit(self, period_start: int) -> int:
        """The fewest replicas this policy allows, from the size at the start of its period."""
        if self.kind == "Pods":
            return period_start - self.value
        return int(period_start * (1 - self.value / 100))


#: What the HPA uses for a direction a ScaledObject does not configure.
HPA_DEFAULT_UP = (RatePolicy("Percent", 100, 15), RatePolicy("Pods", 4, 15))
HPA_DEFAULT_DOWN = (RatePolicy("Percent", 100, 15),)


@dataclass(frozen=True)
class Policy:
    """One stage's scaling numbers, as its ScaledObject states them (no rate policies: no rate limit)."""

    queue: str
    min_replicas: int = 0
    max_replicas: int = 100
    lag_threshold: float = DEFAULT_LAG_THRESHOLD
    activation_lag: float = 0.0
    cooldown: float = 300.0
    polling: float = 30.0
    down_window: float = 300.0
    up_window: float = 0.0
    up_policies: tuple[RatePolicy, ...] = ()
    down_policies: tuple[RatePolicy, ...] = ()
    up_select: str = "Max"
    down_select: str = "Max"
    # One replica, as the stage's Deployment runs it (Dramatiq's defaults where the command says nothing):
    processes: int = field(default_factory=lambda: os.cpu_count() or 1)
    threads: int = 8
    shutdown_timeout: float = 600.0

    @classmethod
    def from_scaled_object(cls, obj: dict[str, Any]) -> Policy:
        spec = obj["spec"]
        [trigger] = [t for t in spec["triggers"] if t["type"] in ("nats-jetstream", "prometheus")]
        meta = trigger["metadata"]
        threshold = float(meta.get("lagThreshold") or meta.get("threshold") or DEFAULT_LAG_THRESHOLD)
        activation = float(meta.get("activationLagThreshold") or meta.get("activationThreshold") or 0)
        behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior", {})
        up, down = behavior.get("scaleUp", {}), behavior.get("scaleDown", {})

        def policies(rules: dict, default: tuple[RatePolicy, ...]) -> tuple[RatePolicy, ...]:
            listed = rules.get("policies")
            if not listed:
                return default
            return tuple(RatePolicy(p["type"], int(p["value"]), float(p["periodSeconds"])) for p in listed)

        return cls(
            queue=obj["metadata"]["name"].removeprefix("pipeline-"),  # as `pipeline manifests` names them
            min_replicas=int(spec.get("minReplicaCount", 0)),
            max_replicas=int(spec.get("maxReplicaCount", 100)),
            lag_threshold=threshold,
            activation_lag=activation,
            cooldown=float(spec.get("cooldownPeriod", 300)),
            polling=float(spec.get("pollingInterval", 30)),
            down_window=float(down.get("stabilizationWindowSeconds", 300)),
            up_window=float(up.get("stabilizationWindowSeconds", 0)),
            up_policies=policies(up, HPA_DEFAULT_UP),
            down_policies=policies(down, HPA_DEFAULT_DOWN),
            up_select=up.get("selectPolicy", "Max"),
            down_select=down.get("selectPolicy", "Max"),
        )

    def with_replica(self, command: list[str]) -> Policy:
        """This policy with a replica's processes, threads and shutdown timeout from its ``dramatiq`` command,
        read by Dramatiq's own argument parser (``--processes=4`` and ``--processes 4`` alike)."""
        from dramatiq.cli import make_argument_parser

        if command[:1] != ["dramatiq"]:
            return self
        args, _ = make_argument_parser().parse_known_args(command[1:])
        return replace(
            self,
            queue=args.queues[0] if args.queues and len(args.queues) == 1 else self.queue,
            processes=args.processes,
            threads=args.threads,
            shutdown_timeout=args.worker_shutdown_timeout / 1000,
        )


def stage_policies() -> dict[str, Policy]:
    """Each stage's policy from the table in ``pipeline.policy``, as its rendered ScaledObject states it."""
    from pipeline import manifests
    from pipeline.names import STAGES

    policies = {}
    for stage in STAGES:
        deployment = manifests.worker_deployment(stage)
        command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
        scaled = manifests.scaled_object(stage, manifests.jetstream_trigger(stage))
        policies[stage] = Policy.from_scaled_object(scaled).with_replica(command)
    return policies


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
    try:
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
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise ValueError(f"a manifest in {directory} is not a Deployment or ScaledObject we can read: {e!r}") from e
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
    _events: deque[tuple[float, int]] = field(default_factory=deque)  # the HPA's own changes: (when, delta)

    def __post_init__(self) -> None:
        self.replicas = max(self.replicas, self.policy.min_replicas)

    def decide(self, lag: int, now: float) -> int:
        """The pool's size from now on, given its lag."""
        policy = self.policy
        if lag > policy.activation_lag:
            self._last_active = now
        if self.replicas == 0:  # KEDA's part: activation
            if lag <= policy.activation_lag:
                return 0
            self._recommendations.clear()
            self.replicas = max(policy.min_replicas, 1)
            return self.replicas
        if policy.min_replicas == 0 and now - self._last_active >= policy.cooldown:  # KEDA's part: back to zero
            self.replicas = 0
            return 0
        desired = self._stabilised(self._recommend(lag), now)  # the HPA's part
        return self._set(self._rate_limited(desired, now), now)

    def _recommend(self, lag: int) -> int:
        policy = self.policy
        ratio = lag / (self.replicas * policy.lag_threshold)
        desired = self.replicas if abs(ratio - 1) <= TOLERANCE else math.ceil(lag / policy.lag_threshold)
        return min(max(desired, policy.min_replicas, 1), policy.max_replicas)

    def _stabilised(self, recommended: int, now: float) -> int:
        """Up only to the lowest recommendation of the up window, down only to the highest of the down window."""
        policy = self.policy
        self._recommendations.append((now, recommended))
        oldest = now - max(policy.up_window, policy.down_window)
        while self._recommendations[0][0] < oldest:
            self._recommendations.popleft()
        up = min(r for at, r in self._recommendations if at >= now - policy.up_window)
        down = max(r for at, r in self._recommendations if at >= now - policy.down_window)
        return min(max(self.replicas, up), down)

    def _rate_limited(self, desired: int, now: float) -> int:
        policy = self.policy
        if desired > self.replicas and policy.up_policies:
            if policy.up_select == "Disabled":
                return self.replicas
            limits = [rate.up_limit(self._period_start(rate.period, now)) for rate in policy.up_policies]
            limit = max(limits) if policy.up_select == "Max" else min(limits)
            return min(desired, max(limit, self.replicas))
        if desired < self.replicas and policy.down_policies:
            if policy.down_select == "Disabled":
                return self.replicas
            limits = [rate.down_limit(self._period_start(rate.period, now)) for rate in policy.down_policies]
            limit = min(limits) if policy.down_select == "Max" else max(limits)  # Max: the largest change
            return max(desired, min(limit, self.replicas))
        return desired

    def _period_start(self, period: float, now: float) -> int:
        """The size this pool had ``period`` seconds ago, counting only the HPA's changes since."""
        return self.replicas - sum(delta for at, delta in self._events if at > now - period)

    def _set(self, replicas: int, now: float) -> int:
        if replicas != self.replicas:
            self._events.append((now, replicas - self.replicas))
            longest = max((r.period for r in self.policy.up_policies + self.policy.down_policies), default=0)
            while self._events and self._events[0][0] <= now - longest:
                self._events.popleft()
            self.replicas = replicas
        return replicas


class Pool(Protocol):
    """What the autoscaler resizes: :class:`pipeline.workers.WorkerPool`."""

    queue: str
    size: int

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
        members: Callable[[], Mapping[str, list[str]]] | None = None,
        me: str = "",
        budget: int | None = None,
    ) -> None:
        """``members`` (with ``me``, this machine's name): the machines that scale each queue together
        (:mod:`pipeline.members`), each running its share of the count; None: this machine alone.
        ``budget``: worker processes this machine runs at most (:mod:`pipeline.machine`); None: no limit."""
        super().__init__()
        self.budget = budget
        self.processes = {queue: policies[queue].processes for queue in pools}
        self.lag = lag
        self.members = members
        self.me = me
        self._machines: dict[str, int] = {}
        self.pools = dict(pools)
        self.scalers = {queue: Scaler(policies[queue]) for queue in self.pools}
        self.clock = clock
        self.interval = min(policies[queue].polling for queue in self.pools)
        self.outage = Outage("autoscale: pools keep their size", logger)

    def step(self) -> dict[str, int]:
        """Read the lag once and resize every pool to this machine's share; returns the shares."""
        lags = self.lag(set(self.pools))
        members = self.members() if self.members is not None else {}
        now = self.clock()
        sizes = {}
        for queue, pool in self.pools.items():
            before = self.scalers[queue].replicas
            wanted = self.scalers[queue].decide(lags.get(queue, 0), now)
            machines = members.get(queue) or [self.me]
            sizes[queue] = share(wanted, machines, self.me)
            if wanted != before:
                logger.info("%s: %d -> %d replicas (lag %d)", queue, before, wanted, lags.get(queue, 0))
            if self.members is not None and (sizes[queue] != pool.size or len(machines) != self._machines.get(queue)):
                logger.info(
                    "%s: this machine runs %d of %d replicas (%d machine%s autoscale it)",
                    queue, sizes[queue], wanted, len(machines), "s" if len(machines) > 1 else "",
                )  # fmt: skip
            self._machines[queue] = len(machines)
        if self.budget is not None:
            fitted = fit(sizes, self.processes, self.budget)
            for queue in sorted(q for q in sizes if fitted[q] != sizes[q] and fitted[q] != self.pools[q].size):
                logger.info(
                    "%s: %d of the %d replicas wanted, within this machine's %d worker processes",
                    queue, fitted[queue], sizes[queue], self.budget,
                )  # fmt: skip
            sizes = fitted
        for queue, pool in self.pools.items():
            pool.resize(sizes[queue])
        return sizes

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.step()
                self.outage.ok()
            except Exception as e:  # NATS away for a moment: keep the pools as they are, try again
                self.outage.failed(e)
            self.stop_event.wait(self.interval)
