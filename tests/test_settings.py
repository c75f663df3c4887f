"""One settings object: the README's table is generated from it, children get it back whole, secrets stay hidden."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.settings import Settings, SettingsError, markdown_table

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-settings-test-" + "z" * 24


def test_the_readme_table_is_the_generated_one() -> None:
    readme = (ROOT / "README.md").read_text()
    shown = readme.split("<!-- settings:begin -->\n", 1)[1].split("\n<!-- settings:end -->", 1)[0]
    assert shown == markdown_table(), "regenerate it: pipeline settings --markdown"
    for name in Settings.load().environment():
        assert f"`{name}`" in shown


def test_a_child_process_loads_back_exactly_the_parents_settings(tmp_path: Path) -> None:
    settings = Settings.load(
        home=tmp_path,
        prefix="p1",
        webhook_secret="whsec_" + "A" * 32,
        nats={"url": "nats://a:4222,nats://b:4222", "replicas": 3},
        fetch={"allow_hosts": ["127.0.0.1", "10.0.0.0/8"], "domain_interval": 0},
        llm={"keys": [KEY], "rpm": 60, "prices": {"m": [1, 2]}},
        database={"url": "postgresql://u:pw@db/pipeline"},
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_", "OPENAI_"))}
    code = "from pipeline.settings import Settings; print(Settings.load().model_dump_json())"
    child = subprocess.run(
        [sys.executable, "-c", code], env={**env, **settings.environment()}, capture_output=True, text=True, check=True
    )
    dumped = json.loads(child.stdout)
    assert dumped["nats"] == {
        "url": "nats://a:4222,nats://b:4222",
        "replicas": 3,
        "storage": "file",
        "server_bin": None,
    }
    assert dumped["fetch"] == {"allow_hosts": ["127.0.0.1", "10.0.0.0/8"], "domain_interval": 0.0}
    assert dumped["llm"]["rpm"] == 60 and dumped["llm"]["prices"]["m"] == [1.0, 2.0]
    assert dumped["prefix"] == "p1" and dumped["home"] == str(tmp_path)
    assert KEY not in child.stdout and "pw" not in child.stdout  # secrets dump masked, yet arrived:
    check = "from pipeline.settings import Settings; s = Settings.load(); print(s.llm.keys[0].secret, s.database_url())"
    child = subprocess.run(
        [sys.executable, "-c", check], env={**env, **settings.environment()}, capture_output=True, text=True, check=True
    )
    assert child.stdout.split() == [KEY, "postgresql://u:pw@db/pipeline"]


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("PIPELINE_NATS_REPLICAS", "7", "PIPELINE_NATS_REPLICAS: input should be less than or equal to 5, got '7'"),
        ("PIPELINE_NATS_STORAGE", "disk", "PIPELINE_NATS_STORAGE: input should be 'file' or 'memory'"),
        ("PIPELINE_FETCH_DOMAIN_INTERVAL", "-1", "PIPELINE_FETCH_DOMAIN_INTERVAL: input should be greater than"),
        ("PIPELINE_LLM_RPM", "lots", "PIPELINE_LLM_RPM: input should be a valid number"),
        ("PIPELINE_PREFIX", "a.b", "PIPELINE_PREFIX: value error, invalid name prefix 'a.b'"),
        ("PIPELINE_METRICS_PORT", "http", "PIPELINE_METRICS_PORT: input should be a valid integer"),
        ("PIPELINE_LLM_PRICES", "{bad", "PIPELINE_LLM_PRICES: not valid JSON"),
        ("PIPELINE_FETCH_ALLOW_HOSTS", "not a host!", "PIPELINE_FETCH_ALLOW_HOSTS: value error, 'not a host!' is"),
        ("PIPELINE_FETCH_ALLOW_HOSTS", "10.0.0.0/40", "PIPELINE_FETCH_ALLOW_HOSTS: value error, '10.0.0.0/40' is"),
    ],
)
def test_a_bad_setting_is_one_line_naming_the_variable_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, says: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=variable):
        Settings.load()
    result = CliRunner().invoke(app, ["monitor", "list"])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {says}") and result.stderr.count("\n") == 1


def test_pipeline_settings_hides_secrets_and_marks_what_was_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_OPENAI_API_KEYS", KEY)
    monkeypatch.setenv("PIPELINE_WEBHOOK_SECRET", "whsec_" + "B" * 32)
    monkeypatch.setenv("PIPELINE_DATABASE_URL", "postgresql://user:hunter2@db.internal/pipeline")
    monkeypatch.setenv("PIPELINE_NATS_URL", "nats://user:natspass@nats-1:4222,nats://nats-2:4222")
    result = CliRunner().invoke(app, ["settings", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    for secret in (KEY, "B" * 32, "hunter2", "natspass"):
        assert secret not in result.output
    assert shown["PIPELINE_OPENAI_API_KEYS"]["value"].startswith("(set: key-")
    assert shown["PIPELINE_OPENAI_API_KEYS"]["set"] and shown["PIPELINE_WEBHOOK_SECRET"]["value"] == "(set)"
    assert shown["PIPELINE_NATS_URL"]["value"] == "nats://nats-1:4222/…,nats://nats-2:4222/…"
    assert shown["PIPELINE_DATABASE_URL"]["value"].startswith("postgresql://db.internal/pipeline")
    assert shown["PIPELINE_LLM_MODEL"] == {"value": "gpt-4o-mini", "set": False}


def test_no_module_reads_the_environment_but_the_settings() -> None:
    """Only :mod:`pipeline.settings` reads ``PIPELINE_*``; the rest is Dramatiq's, prometheus-client's and
    tiktoken's own variables, read where those libraries expect them."""
    theirs = {"dramatiq_prom_db", "dramatiq_prom_port", "dramatiq_dead_message_ttl", "PROMETHEUS_MULTIPROC_DIR",
              "TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"}  # fmt: skip
    readers = []
    for path in [*(ROOT / "pipeline").rglob("*.py"), *(ROOT / "actors").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in theirs:
                continue
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv"):
                readers.append(path.relative_to(ROOT))
    allowed = {Path("pipeline/supervisor.py"), Path("pipeline/llm/tokens.py"), Path("pipeline/observability.py"),
               Path("pipeline/broker/broker.py"), Path("pipeline/cli/run.py"), Path("actors/__init__.py")}  # fmt: skip
    assert set(readers) <= allowed, sorted(set(readers) - allowed)
