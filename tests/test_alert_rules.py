"""The Prometheus alert rules: valid (promtool check rules) and doing what they say (promtool test rules)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import ROOT

PROMETHEUS_DIR = ROOT / "compose" / "prometheus"
promtool = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    promtool is None, reason="promtool not installed (Debian: apt-get install prometheus; .ci/run installs it)"
)


@needs_promtool
def test_rules_are_valid() -> None:
    result = subprocess.run(
        [promtool, "check", "rules", "alerts.yml"], cwd=PROMETHEUS_DIR, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 8 rules found" in result.stdout


@needs_promtool
def test_rules_fire_when_they_should_and_only_then() -> None:
    result = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yml"], cwd=PROMETHEUS_DIR, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
