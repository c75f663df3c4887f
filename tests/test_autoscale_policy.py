"""KEDA's and the HPA's scaling rules, read from the committed ScaledObjects, on a fake clock."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.autoscale import (
    HPA_DEFAULT_DOWN,
    HPA_DEFAULT_UP,
    Policy,
    RatePolicy,
    Scaler,
    load_policies,
    stage_policies,
)
from pipeline.machine import fit, process_budget
from pipeline.names import STAGES
from pipeline.policy import SHUTDOWN_SECONDS, STAGE_POLICIES
from tests.conftest import ROOT

SIMPLE = Policy("fetch", min_replicas=1, max_replicas=10, lag_threshold=100, cooldown=60, down_window=30)


def test_the_policy_is_read_from_the_keda_manifests() -> None:
    policies = load_policies(ROOT / "autoscale" / "keda" / "base")
    assert sorted(policies) == sorted(STAGES)
    fetch = policies["fetch"]
    assert (fetch.min_replicas, fetch.max_replicas, fetch.lag_threshold, fetch.cooldown) == (1, 20, 20, 120)
    assert fetch.down_window == 120 and fetch.polling == 5
    assert fetch.up_policies == (RatePolicy("Pods", 4, 15),)
    assert fetch.down_policies == (RatePolicy("Percent", 50, 30),)
    assert policies["analyse"].min_replicas == 0


def test_a_replica_is_what_the_deployment_runs() -> None:
    policies = load_policies(ROOT / "autoscale" / "keda" / "base")
    for stage, policy in policies.items():
        table = STAGE_POLICIES[stage]
        assert (policy.processes, policy.threads) == (table.processes, table.threads)
        assert policy.shutdown_timeout == SHUTDOWN_SECONDS
    assert stage_policies() == policies  # the built-in table and the committed manifests say the same


def test_missing_or_empty_manifests_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no KEDA manifests at"):
        load_policies(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no ScaledObject in"):
        load_policies(tmp_path)


def test_desired_is_lag_over_threshold_within_bounds() -> None:
    scaler = Scaler(SIMPLE)
    assert scaler.decide(lag=0, now=0) == 1  # never under the minimum
    assert scaler.decide(lag=450, now=5) == 5  # ceil(450 / 100)
    assert scaler.decide(lag=5000, now=10) == 10  # at most the maximum


def test_within_ten_percent_nothing_moves() -> None:
    scaler = Scaler(SIMPLE, replicas=4)
    assert scaler.decide(lag=430, now=0) == 4  # 430 / 400 = 1.075
    assert scaler.decide(lag=460, now=5) == 5  # 1.15: over the tolerance


def test_scale_down_waits_for_the_stabilisation_window() -> None:
    scaler = Scaler(SIMPLE)
    assert scaler.decide(lag=800, now=0) == 8
    assert scaler.decide(lag=100, now=10) == 8  # a dip: the window still holds 8
    assert scaler.decide(lag=100, now=29) == 8
    assert scaler.decide(lag=100, now=31) == 1


def test_rate_policies_limit_each_step() -> None:
    policy = Policy(
        "scrape",
        min_replicas=1,
        max_replicas=20,
        lag_threshold=10,
        down_window=0,
        up_policies=(RatePolicy("Pods", 4, 15),),
        down_policies=(RatePolicy("Percent", 50, 30),),
    )
    scaler = Scaler(policy)
    assert scaler.decide(lag=200, now=0) == 5  # 1 + 4 pods per 15 s
    assert scaler.decide(lag=200, now=5) == 5
    assert scaler.decide(lag=200, now=16) == 9
    assert scaler.decide(lag=0, now=100) == 4  # 9 x (1 - 50%), rounded down as the HPA does
    assert scaler.decide(lag=0, now=110) == 4  # nothing more within the period
    assert scaler.decide(lag=0, now=131) == 2


def test_percent_policies_count_from_the_size_at_the_period_start() -> None:
    policy = Policy(
        "q", min_replicas=1, max_replicas=100, lag_threshold=1, up_policies=(RatePolicy("Percent", 100, 60),)
    )
    scaler = Scaler(policy, replicas=2)
    assert scaler.decide(lag=100, now=0) == 4  # doubles: 2 -> 4
    assert scaler.decide(lag=100, now=10) == 4  # within the period: still at most 2 x 2
    assert scaler.decide(lag=100, now=61) == 8


def test_select_policy_min_and_disabled() -> None:
    both = (RatePolicy("Pods", 1, 60), RatePolicy("Percent", 100, 60))
    most = Scaler(Policy("q", min_replicas=1, max_replicas=50, lag_threshold=1, up_policies=both), replicas=4)
    least = Scaler(replace(most.policy, up_select="Min"), replicas=4)
    frozen = Scaler(replace(most.policy, up_select="Disabled"), replicas=4)
    assert most.decide(lag=40, now=0) == 8  # Max: the larger change (+100% = +4)
    assert least.decide(lag=40, now=0) == 5  # Min: the smaller (+1)
    assert frozen.decide(lag=40, now=0) == 4


def test_scale_up_waits_for_its_stabilisation_window() -> None:
    scaler = Scaler(Policy("q", min_replicas=1, max_replicas=20, lag_threshold=10, up_window=30), replicas=1)
    assert scaler.decide(lag=100, now=0) == 10  # the only recommendation in the window
    assert scaler.decide(lag=20, now=5) == 10  # down is the down window's business (300 s)
    scaler = Scaler(Policy("q", min_replicas=1, max_replicas=20, lag_threshold=10, up_window=30), replicas=1)
    assert scaler.decide(lag=5, now=0) == 1
    assert scaler.decide(lag=100, now=10) == 1  # the window still holds a recommendation of 1
    assert scaler.decide(lag=100, now=31) == 10


def test_a_direction_left_out_gets_the_hpas_defaults(tmp_path: Path) -> None:
    manifest = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "pipeline-q"},
        "spec": {
            "scaleTargetRef": {"name": "pipeline-q"},
            "triggers": [{"type": "nats-jetstream", "metadata": {"stream": "s", "consumer": "c"}}],
        },
    }
    (tmp_path / "q.yaml").write_text(yaml.safe_dump(manifest))
    policy = load_policies(tmp_path)["q"]
    assert policy.lag_threshold == 10  # KEDA's default
    assert policy.up_policies == HPA_DEFAULT_UP and policy.down_policies == HPA_DEFAULT_DOWN
    assert (policy.down_window, policy.up_window, policy.cooldown, policy.polling) == (300, 0, 300, 30)
    assert policy.shutdown_timeout == 600  # Dramatiq's, as the Deployment's command sets none


def test_to_zero_after_the_cooldown_and_back_on_activation() -> None:
    policy = Policy(
        "alert", min_replicas=0, max_replicas=5, lag_threshold=50, activation_lag=0, cooldown=120, down_window=0
    )
    scaler = Scaler(policy)
    assert scaler.decide(lag=0, now=0) == 0  # never active
    assert scaler.decide(lag=120, now=5) == 1  # KEDA activates: 0 -> 1
    assert scaler.decide(lag=120, now=10) == 3  # then the HPA: ceil(120 / 50)
    assert scaler.decide(lag=0, now=60) == 1  # idle, but not for a whole cooldown
    assert scaler.decide(lag=0, now=129) == 1
    assert scaler.decide(lag=0, now=131) == 0  # 120 s after the last lag
    assert scaler.decide(lag=1, now=135) == 1


@settings(max_examples=200, deadline=None)
@given(
    lags=st.lists(st.integers(0, 10_000), min_size=1, max_size=60),
    minimum=st.integers(0, 3),
    maximum=st.integers(3, 30),
)
def test_replicas_stay_within_bounds_and_idle_pools_reach_their_floor(
    lags: list[int], minimum: int, maximum: int
) -> None:
    policy = Policy(
        "q",
        min_replicas=minimum,
        max_replicas=maximum,
        lag_threshold=100,
        cooldown=60,
        down_window=30,
        up_policies=(RatePolicy("Pods", 4, 15),),
        down_policies=(RatePolicy("Percent", 50, 15),),
    )
    scaler = Scaler(policy)
    now = 0.0
    for lag in lags:
        now += 5
        replicas = scaler.decide(lag, now)
        assert 0 <= replicas <= maximum
        assert replicas >= minimum
    for _ in range(60):  # five idle minutes
        now += 5
        scaler.decide(0, now)
    assert scaler.replicas == minimum


# One machine's budget of worker processes (pipeline/machine.py)

QUEUES = st.dictionaries(st.sampled_from(["fetch", "scrape", "analyse", "alert"]), st.integers(0, 30), min_size=1)


@settings(max_examples=2000)
@given(QUEUES, st.integers(1, 40), st.data())
def test_fitting_keeps_the_budget_the_proportions_and_every_stage_with_work(wanted, budget, data) -> None:
    processes = {q: data.draw(st.integers(1, 3)) for q in wanted}
    sizes = fit(wanted, processes, budget)
    cost = sum(sizes[q] * processes[q] for q in sizes)
    busy = [q for q in wanted if wanted[q]]
    assert all(0 <= sizes[q] <= wanted[q] for q in wanted)
    assert all(sizes[q] >= 1 for q in busy)  # no stage with work is starved
    if sum(wanted[q] * processes[q] for q in wanted) <= budget:
        assert sizes == wanted  # within budget: the policy as it is
    elif sum(processes[q] for q in busy) <= budget:
        assert cost <= budget  # over it: held to the budget whenever one replica each fits
        if len(set(processes.values())) == 1:  # replicas of one size: each stage its fraction, within one
            # (short of that only when the one replica each took the room: a replica more would not fit)
            share = budget / sum(wanted[q] * processes[q] for q in wanted)
            full = budget - cost < min(processes.values())
            assert all(sizes[q] >= min(wanted[q], int(wanted[q] * share)) - 1 or full for q in busy), sizes


def test_the_budget_follows_cores_and_memory() -> None:
    assert process_budget(cores=2, memory=64 * 2**30) == 4  # two per core
    assert process_budget(cores=16, memory=64 * 2**30) == 32
    assert process_budget(cores=16, memory=1 * 2**30) == 6  # what 1 GiB holds at 150 MiB each
    assert process_budget(cores=1, memory=2**20) == 4  # at least one per stage
