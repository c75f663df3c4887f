"""KEDA's and the HPA's scaling rules, read from the committed ScaledObjects, on a fake clock."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.autoscale import Policy, RatePolicy, Scaler, load_policies
from pipeline.stages import STAGES
from tests.conftest import ROOT, load_script

SIMPLE = Policy("fetch", min_replicas=1, max_replicas=10, lag_threshold=100, cooldown=60, down_window=30)


def test_the_policy_is_read_from_the_keda_manifests() -> None:
    policies = load_policies(ROOT / "autoscale" / "keda" / "base")
    assert sorted(policies) == sorted(STAGES)
    fetch = policies["fetch"]
    assert (fetch.min_replicas, fetch.max_replicas, fetch.lag_threshold, fetch.cooldown) == (1, 20, 200, 120)
    assert fetch.down_window == 120 and fetch.polling == 5
    assert fetch.up_policies == (RatePolicy("Pods", 4, 15),)
    assert fetch.down_policies == (RatePolicy("Percent", 50, 30),)
    assert policies["analyse"].min_replicas == 0


def test_a_replica_is_what_the_deployment_runs() -> None:
    manifests = load_script(ROOT / "autoscale" / "keda" / "manifests.py")
    policies = load_policies(ROOT / "autoscale" / "keda" / "base")
    for stage, policy in policies.items():
        table = manifests.POLICIES[stage]
        assert (policy.processes, policy.threads) == (table.processes, table.threads)
        assert policy.shutdown_timeout == manifests.SHUTDOWN_SECONDS


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
    assert scaler.decide(lag=0, now=100) == 4  # 50% of 9, rounded up (5 pods), may go at once
    assert scaler.decide(lag=0, now=110) == 4  # nothing more within the period
    assert scaler.decide(lag=0, now=131) == 2


def test_to_zero_after_the_cooldown_and_back_on_activation() -> None:
    policy = Policy(
        "alert", min_replicas=0, max_replicas=5, lag_threshold=50, activation_lag=0, cooldown=120, down_window=0
    )
    scaler = Scaler(policy)
    assert scaler.decide(lag=0, now=0) == 0  # never active
    assert scaler.decide(lag=120, now=5) == 3
    assert scaler.decide(lag=0, now=60) == 1  # idle, but not for a whole cooldown
    assert scaler.decide(lag=0, now=126) == 0
    assert scaler.decide(lag=1, now=130) == 1


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
