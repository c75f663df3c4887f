"""The `pipeline monitor` commands on a real SQLite, with the exit codes scripts rely on."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_add_list_pause_resume_remove() -> None:
    code, out = run("monitor", "add", "https://example.com/kettle", "--rule", "price < 100", "--every", "600",
                    "--notify", "https://hooks.example.com/a", "--question", "Is it discounted?")  # fmt: skip
    assert code == 0 and out.splitlines()[0] == "1"  # then a warning: no LLM key here
    code, out = run("monitor", "show", "1")
    assert code == 0 and "url: https://example.com/kettle" in out and "recent checks:" in out
    assert run("monitor", "show", "2")[0] == 2  # no such monitor: bad input
    assert run("monitor", "pause", "1") == (0, "paused monitor 1\n")
    code, out = run("monitor", "list", "--json")
    [row] = json.loads(out)
    assert (row["url"], row["rule"], row["question"], row["every"], row["paused"]) == (
        "https://example.com/kettle",
        "price < 100",
        "Is it discounted?",
        600,
        True,
    )
    assert run("monitor", "resume", "1") == (0, "resumed monitor 1\n")
    assert json.loads(run("monitor", "list", "--json")[1])[0]["paused"] is False
    assert run("monitor", "rm", "1") == (0, "removed monitor 1\n")
    assert json.loads(run("monitor", "list", "--json")[1]) == []


def test_monitor_list_says_how_each_monitor_is_fetched() -> None:
    run("monitor", "add", "https://example.com/kettle", "--selector", ".price")
    run("monitor", "add", "https://example.com/app", "--browser", "--wait-for", ".loaded")
    rows = json.loads(run("monitor", "list", "--json")[1])
    assert [(r["fetch"], r["selector"]) for r in rows] == [("http", ".price"), ("browser", None)]
    code, out = run("monitor", "list")
    header, *lines = out.splitlines()
    assert code == 0 and "FETCH" in header.split()
    assert [line.split()[3] for line in lines] == ["http", "browser"], out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ftp://example.com"], "URL scheme should be 'http' or 'https'"),
        (["https://example.com", "--rule", "price is low"], "cannot understand rule"),
        (["https://example.com", "--every", "5"], "--every must be from 30 seconds to 31622400 (a year), got 5"),
        (["https://example.com", "--every", "9" * 23], "--every must be from 30 seconds to 31622400"),
        (["https://example.com", "--notify", "nobody"], "is not a URL"),
    ],
)
def test_bad_input_is_refused_with_exit_code_2(args: list[str], message: str) -> None:
    code, out = run("monitor", "add", *args)
    assert code == 2
    assert message in " ".join(out.split())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["up", "--manifests", "/nowhere"], "no KEDA manifests at /nowhere"),
        (["autoscale", "--manifests", "/nowhere"], "no KEDA manifests at /nowhere"),
        (["autoscale", "--queue", "fetch", "--queue", "nope"], "no ScaledObject for nope"),
    ],
)
def test_autoscaling_without_a_policy_is_refused(args: list[str], message: str) -> None:
    code, out = run(*args)
    assert code == 2
    assert message in " ".join(out.split())


@pytest.mark.parametrize("command", ["show", "pause", "resume", "rm"])
def test_an_unknown_monitor_is_bad_input(command: str) -> None:
    code, out = run("monitor", command, "99")
    assert code == 2 and out.strip() == "error: no monitor 99"


def test_status_and_dlq_on_a_live_server(nats_server, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import dramatiq

    from pipeline.broker import JetStreamBroker

    monkeypatch.setenv("PIPELINE_NATS_URL", nats_server.url)
    monkeypatch.setenv("PIPELINE_PREFIX", prefix)
    broker = JetStreamBroker(nats_server.url, prefix=prefix)
    broker.declare_queue("fetch")
    broker.enqueue(dramatiq.Message(queue_name="fetch", actor_name="fetch", args=({},), kwargs={}, options={}))
    consumer = broker.consume("fetch", prefetch=1, timeout=2000)
    message = next(consumer)
    message.stuff_exception(ValueError("broken page"))
    consumer.nack(message)
    consumer.close()

    code, out = run("status", "--json")
    assert code == 0
    assert json.loads(out)["queues"]["fetch"] == {"lag": 0, "dead": 1}
    listed = runner.invoke(app, ["dlq", "list", "--json"])
    [letter] = json.loads(listed.stdout)
    assert "1 of 1 dead letter(s)" in listed.stderr
    assert (letter["queue"], letter["reason"]) == ("fetch", "ValueError: broken page")
    assert run("dlq", "replay", str(letter["sequence"]))[0] == 0
    assert broker.lag() == {"fetch": 1}  # back where it came from
    assert json.loads(runner.invoke(app, ["dlq", "list", "--json"]).stdout) == []
    broker.close()


def test_check_shows_the_watched_text_and_the_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.site import Page, Site

    monkeypatch.setenv("PIPELINE_FETCH_ALLOW_HOSTS", "127.0.0.1")
    with Site() as site:
        site.routes["/k"] = Page(b"<nav>menu</nav><p class='price'>Price: 89.90 EUR</p>")
        code, out = run("check", site.url("/k"), "--selector", ".price", "--rule", "price < 100", "--json")
        assert code == 0
        assert json.loads(out)["text"] == "Price: 89.90 EUR"
        assert run("check", site.url("/k"), "--selector", ".price", "--rule", "price < 50")[0] == 3
        code, out = run("check", site.url("/missing"))
        assert code == 1 and "HTTP 404" in out
    monkeypatch.delenv("PIPELINE_FETCH_ALLOW_HOSTS")
    code, out = run("check", "http://169.254.169.254/latest/meta-data/")
    assert code == 1 and "non-public address" in out


def test_monitor_output_never_shows_keys_in_urls() -> None:
    code, _ = run("monitor", "add", "https://user:pw@example.com/feed?api_key=SECRET1", "--notify",
                  "https://hooks.example.com/T000/B000/XXXX")  # fmt: skip
    assert code == 0
    shown = run("monitor", "show", "1")[1] + run("monitor", "list", "--json")[1]
    assert "SECRET1" not in shown and "pw@" not in shown and "XXXX" not in shown
    assert "https://example.com/feed" in shown


def test_check_asks_the_llm_and_status_shows_it(nats_server, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.llm import APIKey
    from tests.openai_server import OpenAIServer
    from tests.site import Page, Site

    key = "sk-cli-" + "5" * 40
    monkeypatch.setenv("PIPELINE_FETCH_ALLOW_HOSTS", "127.0.0.1")
    monkeypatch.setenv("PIPELINE_NATS_URL", nats_server.url)
    monkeypatch.setenv("PIPELINE_PREFIX", prefix)
    monkeypatch.delenv("PIPELINE_OPENAI_API_KEYS", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with Site() as site, OpenAIServer([key]) as llm:
        site.routes["/k"] = Page(b"<p class='stock'>Kettle: in stock</p>")
        code, out = run("check", site.url("/k"), "--question", "Is the kettle in stock?")
        assert code == 2 and "PIPELINE_OPENAI_API_KEYS" in out
        monkeypatch.setenv("PIPELINE_OPENAI_API_KEYS", key)
        monkeypatch.setenv("PIPELINE_OPENAI_BASE_URL", llm.base_url)
        code, out = run("check", site.url("/k"), "--question", "Is the kettle in stock?", "--json")
        assert code == 0 and json.loads(out)["summary"] == "1 added line(s) match"
        code, out = run("check", site.url("/k"), "--question", "Is the toaster discounted?")
        assert code == 3 and "nothing about the question" in out
        code, out = run("status", "--json")
        shown = json.loads(out)["llm"]
        assert shown["keys"] == [APIKey.of(key).label]
        assert key not in out


def test_exporter_and_scheduler_commands_serve_metrics(nats_server, prefix: str, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys
    import urllib.request

    from pipeline.broker import JetStreamBroker
    from pipeline.nats_server import free_port
    from tests.conftest import ROOT, wait_for
    from tests.live import publish

    env = {**os.environ, "PIPELINE_NATS_URL": nats_server.url, "PIPELINE_PREFIX": prefix,
           "PIPELINE_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}"}  # fmt: skip
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    ports = {"exporter": free_port(), "scheduler": free_port()}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", command, "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for command, port in ports.items()
    ]

    def scrape(port: int) -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                return response.read().decode()
        except OSError:
            return ""

    try:
        assert wait_for(lambda: 'pipeline_queue_lag{queue="fetch"} 0.0' in scrape(ports["exporter"]), 30)
        broker = JetStreamBroker(nats_server.url, prefix=prefix)

        def ingest_ready() -> bool:
            try:
                broker.run(broker.js.stream_info(f"{prefix}-events"))
                return True
            except Exception:
                return False

        assert wait_for(ingest_ready, 30)
        broker.close()
        publish(env, "check", {"url": "https://example.com/kettle"})  # ingested by the scheduler's process
        accepted = 'pipeline_events_total{kind="check",outcome="accepted"} 1.0'
        assert wait_for(lambda: accepted in scrape(ports["scheduler"]), 30)
        assert "pipeline_queue_lag" not in scrape(ports["scheduler"]), "one exporter reads JetStream, not two"
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)


def test_a_removed_monitors_id_and_history_never_pass_to_a_new_one() -> None:
    assert run("monitor", "add", "https://example.com/a")[1].strip() == "1"
    assert run("monitor", "add", "https://example.com/b")[1].strip() == "2"
    assert run("monitor", "rm", "2")[0] == 0
    code, out = run("monitor", "add", "https://example.com/c")
    assert (code, out.strip()) == (0, "3")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--selector", "p["], "invalid selector 'p['"),
        (["--selector", "$.a["], "invalid JSONPath"),
        (["--selector", "//p["], "invalid XPath"),
        (["--rule", "price <"], "cannot understand rule 'price <'"),
    ],
)
def test_monitor_add_refuses_a_bad_selector_or_rule(args: list[str], message: str) -> None:
    code, out = run("monitor", "add", "https://example.com", *args)
    assert code == 2 and message in " ".join(out.split())
    assert json.loads(run("monitor", "list", "--json")[1]) == []


def test_dlq_list_pages_and_says_how_many_in_all(nats_server, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import dramatiq

    from pipeline.broker import JetStreamBroker

    monkeypatch.setenv("PIPELINE_NATS_URL", nats_server.url)
    monkeypatch.setenv("PIPELINE_PREFIX", prefix)
    broker = JetStreamBroker(nats_server.url, prefix=prefix)
    broker.declare_queue("fetch")
    for n in range(5):
        broker.enqueue(dramatiq.Message(queue_name="fetch", actor_name="fetch", args=(n,), kwargs={}, options={}))
    consumer = broker.consume("fetch", prefetch=5, timeout=2000)
    for _ in range(5):
        message = next(consumer)
        message.stuff_exception(ValueError(f"broken {message.args[0]}"))
        consumer.nack(message)
    consumer.close()
    broker.close()

    first = runner.invoke(app, ["dlq", "list", "--limit", "2"])
    lines = first.stdout.splitlines()
    assert lines[0].split() == ["SEQUENCE", "FAILED", "AT", "QUEUE", "SOURCE", "REASON"] and len(lines) == 3
    last = lines[-1].split()[0]
    assert f"2 of 5 dead letter(s); next page: --since {last}" in first.stderr
    second = json.loads(runner.invoke(app, ["dlq", "list", "--json", "--since", last, "--limit", "10"]).stdout)
    assert [letter["reason"] for letter in second] == ["ValueError: broken 2", "ValueError: broken 3",
                                                       "ValueError: broken 4"]  # fmt: skip
    assert len(json.loads(runner.invoke(app, ["dlq", "list", "--json", "--since", "1h"]).stdout)) == 5
    assert json.loads(runner.invoke(app, ["dlq", "list", "--json", "--since", "2099-01-01T00:00"]).stdout) == []
    assert run("dlq", "list", "--since", "yesterday")[0] == 2
    code, out = run("dlq", "list", "--since", "18446744073709551615")
    assert code == 2 and "past any sequence" in out and "Traceback" not in out
    assert run("dlq", "list", "--queue", "nope")[0] == 2
    first_two = [
        str(letter["sequence"]) for letter in json.loads(runner.invoke(app, ["dlq", "list", "--json"]).stdout)
    ][:2]
    assert run("dlq", "purge", *first_two, "--yes") == (0, "deleted 2\n")
    assert len(json.loads(runner.invoke(app, ["dlq", "list", "--json"]).stdout)) == 3
    code, out = run("dlq", "purge", first_two[0], "--yes")
    assert code == 2 and f"no dead letter {first_two[0]}" in out
    assert run("dlq", "replay", first_two[0])[0] == 2 and run("dlq", "replay", "0")[0] == 2


def test_publish_waits_until_the_event_is_stored(
    nats_server, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.broker import JetStreamBroker
    from pipeline.ingest import Ingest
    from pipeline.names import events_stream
    from pipeline.runtime import context, reset

    monkeypatch.setenv("PIPELINE_NATS_URL", nats_server.url)
    monkeypatch.setenv("PIPELINE_PREFIX", prefix)
    event = '{"url": "https://example.com/kettle", "selector": ".price", "rule": "price < 100"}'
    code, out = run("publish", "check", event)
    assert code == 1 and "no stream stores" in out  # nothing would ingest it: said, not lost silently

    broker = JetStreamBroker(nats_server.url, prefix=prefix)
    reset()
    Ingest(broker, context(broker)).declare()  # what `pipeline up` and `pipeline scheduler` do first
    code, out = run("publish", "check", event)
    assert code == 0 and f"stored as {events_stream(prefix)} #1" in out
    (tmp_path / "event.json").write_text('{"monitor_id": 7}')
    assert run("publish", "monitor", f"@{tmp_path / 'event.json'}")[0] == 0
    result = runner.invoke(app, ["publish", "content", "-"], input='{"source": "feed", "content": "<p>1</p>"}')
    assert result.exit_code == 0, result.output
    info = broker.run(broker.js.stream_info(events_stream(prefix)))
    assert info.state.messages == 3
    broker.close()
    reset()

    for args, message in (
        (["check", '{"url": "ftp://x"}'], "URL scheme should be 'http' or 'https'"),
        (["nope", "{}"], "no event kind 'nope'"),
        (["check", "@/nowhere.json"], "cannot read /nowhere.json"),
        (["check", "not json"], "not JSON"),
    ):
        code, out = run("publish", *args)
        assert code == 2 and message in out, (args, out)


@pytest.mark.parametrize("command", [["publish", "monitor", '{"monitor_id": 1}'], ["status"], ["lag"], ["dlq", "list"]])
def test_without_a_running_pipeline_commands_say_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    """Not an empty picture of a pipeline they started themselves."""
    monkeypatch.delenv("PIPELINE_NATS_URL", raising=False)
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path / "empty"))
    code, out = run(*command)
    assert code == 1 and "no pipeline is running here" in out, out
    assert not (tmp_path / "empty" / "jetstream").exists()  # no server was started for it


def test_replicas_a_single_server_cannot_keep_are_one_line(nats_server, prefix: str, monkeypatch) -> None:
    monkeypatch.setenv("PIPELINE_NATS_URL", nats_server.url)
    monkeypatch.setenv("PIPELINE_PREFIX", prefix)
    monkeypatch.setenv("PIPELINE_NATS_REPLICAS", "3")
    code, out = run("status")
    assert code == 1 and out.startswith("error: NATS: replicas > 1 not supported in non-clustered mode"), out
    assert out.count("\n") == 1


def test_a_database_url_sqlalchemy_cannot_use_is_bad_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_DATABASE_URL", "garbage://nowhere/db")
    code, out = run("monitor", "list")
    assert code == 2 and out.startswith("error: PIPELINE_DATABASE_URL: ") and out.count("\n") == 1, out


def test_monitor_import_takes_csv_json_lines_and_url_lists_and_reports_bad_rows_by_line(tmp_path: Path) -> None:
    (tmp_path / "shops.csv").write_text(
        "url,name,selector,rule,every,notify\n"
        "https://a.example/kettle,Kettle,.price,price < 100,600,https://hooks.example.com/a mailto://u:p@example.com\n"
        '"https://b.example/toaster","Toaster, red",,,,\n'
        "not a url,x,,,,\n"
        "https://c.example/p,,[[,,,\n"
        "https://d.example/p,,,,10,\n"
    )
    code, out = run("monitor", "import", str(tmp_path / "shops.csv"))
    assert code == 2  # some rows were bad: the good ones are stored all the same
    assert "imported 2 monitors (ids 1..2)" in out
    assert "line 4: url: Input should be a valid URL" in out
    assert "line 5: selector: invalid selector '[['" in out
    assert "line 6: every: at least 30 seconds, got 10" in out
    listed = json.loads(runner.invoke(app, ["monitor", "list", "--json"]).stdout)
    assert [(m["name"], m["rule"], m["every"]) for m in listed] == [("Kettle", "price < 100", 600),
                                                                     ("Toaster, red", None, 3600)]  # fmt: skip
    shown = json.loads(runner.invoke(app, ["monitor", "show", "1", "--json"]).stdout)
    assert len(shown["notify"]) == 2 and "u:p" not in json.dumps(shown)

    (tmp_path / "more.jsonl").write_text(
        '{"url": "https://e.example/1", "notify": ["https://hooks.example.com/b"], "every": 120}\n'
        "\n"
        '{"url": "https://e.example/2", "colour": "red"}\n'
        "[1, 2]\n"
    )
    result = runner.invoke(app, ["monitor", "import", str(tmp_path / "more.jsonl"), "--rule", "changed", "--json"])
    report = json.loads(result.stdout)
    assert result.exit_code == 2 and report["imported"] == 1 and report["first_id"] == 3
    unknown = "unknown field 'colour' (fields: url, name, selector, rule, question, every, notify, fetch, wait_for)"
    assert report["bad_rows"] == [{"line": 3, "error": unknown}, {"line": 4, "error": "not a JSON object"}]

    (tmp_path / "urls.txt").write_text("# watched\nhttps://f.example/1\n\nhttps://f.example/2\n")
    code, out = run("monitor", "import", str(tmp_path / "urls.txt"), "--every", "300", "--selector", "h1")
    assert code == 0 and "imported 2 monitors (ids 4..5)" in out
    listed = json.loads(runner.invoke(app, ["monitor", "list", "--json"]).stdout)
    assert [m["every"] for m in listed][-2:] == [300, 300]


def test_monitor_import_refuses_a_file_it_cannot_read_and_stores_nothing(tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_text("link,name\nhttps://a.example/,a\n")
    code, out = run("monitor", "import", str(tmp_path / "bad.csv"))
    assert code == 2 and "unknown column 'link'" in out and out.startswith("error: ")
    (tmp_path / "latin1.txt").write_bytes("https://a.example/caf\xe9\n".encode("latin-1"))
    code, out = run("monitor", "import", str(tmp_path / "latin1.txt"))
    assert code == 2 and "not UTF-8 text" in out
    code, out = run("monitor", "import", str(tmp_path / "missing.csv"))
    assert code == 2 and "cannot read" in out
    assert json.loads(runner.invoke(app, ["monitor", "list", "--json"]).stdout) == []


def test_browser_checks_take_wait_for_from_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out = run("monitor", "add", "https://shop.example/lamp", "--selector", ".price", "--browser",
                    "--wait-for", ".price.loaded")  # fmt: skip
    assert (code, out.strip()) == (0, "1")
    code, out = run("monitor", "show", "1", "--json")
    shown = json.loads(out)
    assert (shown["fetch"], shown["wait_for"]) == ("browser", ".price.loaded")
    code, out = run("monitor", "add", "https://shop.example/lamp", "--wait-for", ".price.loaded")
    assert code == 2 and "--wait-for needs --browser" in out
    code, out = run("check", "https://shop.example/lamp", "--wait-for", ".price.loaded")
    assert code == 2 and "--wait-for needs --browser" in out
    (tmp_path / "lamps.jsonl").write_text(
        '{"url": "https://shop.example/a", "fetch": "browser", "wait_for": ".price"}\n'
        '{"url": "https://shop.example/b", "wait_for": ".price"}\n'
    )
    code, out = run("monitor", "import", str(tmp_path / "lamps.jsonl"))
    assert code == 2 and "line 2: " in out and "wait_for needs" in out
    imported = json.loads(run("monitor", "show", "2", "--json")[1])
    assert (imported["fetch"], imported["wait_for"]) == ("browser", ".price")


@pytest.mark.skipif(__import__("shutil").which("chromium") is None, reason="Debian's chromium is not installed")
def test_check_renders_a_page_written_by_javascript(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.site import Page, Site
    from tests.test_render import LATE_PRICE

    monkeypatch.setenv("PIPELINE_FETCH_ALLOW_HOSTS", "127.0.0.1")
    with Site() as site:
        site.routes["/lamp"] = Page(LATE_PRICE, headers={"Content-Type": "text/html"})
        code, out = run("check", site.url("/lamp"), "--selector", ".price", "--rule", "price < 100", "--browser",
                        "--wait-for", ".price.loaded", "--json")  # fmt: skip
        assert code == 0, out
        assert (json.loads(out)["text"], json.loads(out)["status"]) == ("Price: 42 EUR", 200)
        assert "loading..." in run("check", site.url("/lamp"), "--selector", ".price")[1]  # HTTP: no script ran


def test_screenshot_refuses_bad_keys_and_paths_with_one_line(tmp_path: Path) -> None:
    code, out = run("screenshot", "sha256:" + "a" * 5000)
    assert code == 2 and "is not a screenshot key" in out and len(out) < 300


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        (["--rule", "price <<"], "options: rule: "),
        (["--every", "0"], "options: every: at least 30 seconds, got 0"),
        (["--selector", "[["], "options: selector: invalid selector '[['"),
    ],
)
def test_monitor_import_refuses_bad_options_once_and_stores_nothing(
    tmp_path: Path, options: list[str], reason: str
) -> None:
    (tmp_path / "urls.txt").write_text("https://a.example/1\nhttps://a.example/2\nhttps://a.example/3\n")
    code, out = run("monitor", "import", str(tmp_path / "urls.txt"), *options)
    assert code == 2 and out.startswith(f"error: {reason}") and out.count("\n") == 1, out
    assert json.loads(run("monitor", "list", "--json")[1]) == []


def test_monitor_import_reads_every_as_whole_seconds(tmp_path: Path) -> None:
    (tmp_path / "m.jsonl").write_text(
        '{"url": "https://a.example/1", "every": 60.5}\n{"url": "https://a.example/2", "every": 90.0}\n'
        '{"url": "https://a.example/3", "every": 0}\n'
    )
    result = runner.invoke(app, ["monitor", "import", str(tmp_path / "m.jsonl"), "--json"])
    report = json.loads(result.stdout)
    assert report["imported"] == 1 and [b["line"] for b in report["bad_rows"]] == [1, 3], report
    assert report["bad_rows"][0]["error"] == "every: not a whole number of seconds: 60.5"
    assert report["bad_rows"][1]["error"] == "every: at least 30 seconds, got 0"
    assert [m["every"] for m in json.loads(run("monitor", "list", "--json")[1])] == [90]


def test_one_monitor_is_said_in_the_singular(tmp_path: Path) -> None:
    (tmp_path / "urls.txt").write_text("https://a.example/1\nnot a url\n")
    code, out = run("monitor", "import", str(tmp_path / "urls.txt"))
    assert code == 2 and "imported 1 monitor (id 1) in " in out and "; 1 bad row skipped" in out, out


@pytest.mark.parametrize("command", ["show", "pause", "resume", "rm"])
def test_a_monitor_id_past_64_bits_is_bad_input(command: str) -> None:
    code, out = run("monitor", command, "99999999999999999999999")
    assert code == 2 and out.startswith("error: ") and out.count("\n") == 1 and "Traceback" not in out, out


@pytest.mark.parametrize("args", [[], ["monitor"], ["dlq"]])
def test_a_bare_command_prints_its_help_whole(args: list[str]) -> None:
    code, out = run(*args)
    assert code == 0 and out.startswith("Usage: ") and "\n\nOptions:\n" in out, out


def test_one_pipeline_up_per_home(tmp_path: Path) -> None:
    import subprocess
    import sys

    from pipeline.supervisor import HomeInUseError, hold_home

    held = hold_home(tmp_path)
    with pytest.raises(HomeInUseError, match=rf"another `pipeline up` \(pid {os.getpid()}\) runs with the home"):
        hold_home(tmp_path)
    script = "import sys, pathlib, pipeline.supervisor as s; s.hold_home(pathlib.Path(sys.argv[1]))"
    other = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True)
    assert other.returncode == 1 and "HomeInUseError" in other.stderr  # another process is refused too
    held.close()  # the first one ends: the home is free again
    hold_home(tmp_path).close()
    env = {**os.environ, "PIPELINE_HOME": str(tmp_path)}
    with hold_home(tmp_path):
        up = subprocess.run([sys.executable, "-m", "pipeline.cli", "up"], capture_output=True, text=True, env=env)
    assert up.returncode == 1 and up.stderr.startswith("error: another `pipeline up` (pid "), up.stderr
    assert "give this one its own PIPELINE_HOME" in up.stderr and up.stderr.count("\n") == 1


def test_a_monitor_on_a_refused_address_is_stored_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = runner.invoke(app, ["monitor", "add", "http://127.0.0.1:8080/x"])
    assert result.exit_code == 0 and result.stdout.strip() == "1"
    assert "warning: this machine's address policy refuses" in result.stderr, result.stderr
    for url in ("http://localhost/x", "http://[::1]/x", "http://10.1.2.3/x"):
        assert "warning" in runner.invoke(app, ["monitor", "add", url]).stderr, url
    assert "warning" not in runner.invoke(app, ["monitor", "add", "https://example.com/x"]).stderr
    (tmp_path / "urls.txt").write_text("http://127.0.0.1/a\nhttp://192.168.0.9/b\nhttps://example.com/c\n")
    result = runner.invoke(app, ["monitor", "import", str(tmp_path / "urls.txt")])
    assert result.exit_code == 0 and "warning: 2 monitors on a non-public address" in result.stderr
    monkeypatch.setenv("PIPELINE_FETCH_ALLOW_HOSTS", "127.0.0.1")
    assert "warning" not in runner.invoke(app, ["monitor", "add", "http://127.0.0.1:8080/y"]).stderr


def test_a_question_without_an_llm_key_is_stored_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PIPELINE_OPENAI_API_KEYS", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    result = runner.invoke(app, ["monitor", "add", "https://example.com/x", "--question", "Cheaper?"])
    assert result.exit_code == 0 and "the question is not asked and the rule alone decides" in result.stderr
    monkeypatch.setenv("PIPELINE_OPENAI_API_KEYS", "sk-test")
    result = runner.invoke(app, ["monitor", "add", "https://example.com/y", "--question", "Cheaper?"])
    assert result.exit_code == 0 and "warning" not in result.stderr


def test_a_notify_target_apprise_does_not_know_is_bad_input() -> None:
    code, out = run("monitor", "add", "https://example.com/x", "--notify", "slack://nope")
    assert code == 2 and out.startswith("error: notify: notify target slack://… is neither a webhook"), out
    assert json.loads(run("monitor", "list", "--json")[1]) == []


def test_monitor_show_lists_the_fields_in_their_declared_order() -> None:
    run("monitor", "add", "https://example.com/kettle", "--rule", "price < 100")
    run("monitor", "pause", "1")
    code, out = run("monitor", "show", "1")
    keys = [line.split(":", 1)[0] for line in out.split("recent checks:")[0].splitlines()]
    assert code == 0 and keys[:5] == ["id", "name", "url", "selector", "rule"], keys
    assert "every" in keys and "interval_seconds" not in keys  # the name `list`, `add --every` and import use


def test_ctrl_c_during_a_check_ends_it_quietly(tmp_path: Path) -> None:
    import signal
    import socket
    import subprocess
    import sys

    with socket.socket() as server:  # a site that takes the connection and never answers
        server.bind(("127.0.0.1", 0))
        server.listen()
        url = f"http://127.0.0.1:{server.getsockname()[1]}/"
        env = {**os.environ, "PIPELINE_HOME": str(tmp_path), "PIPELINE_FETCH_ALLOW_HOSTS": "127.0.0.1"}
        check = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "check", url], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        server.settimeout(30)
        connection, _ = server.accept()  # the request is under way
        check.send_signal(signal.SIGINT)
        _, err = check.communicate(timeout=30)
        connection.close()
    assert check.returncode == 130 and "Task was destroyed" not in err and "Traceback" not in err, err


def test_import_reads_every_within_a_year_as_a_whole_number(tmp_path: Path) -> None:
    (tmp_path / "m.jsonl").write_text(
        '{"url": "https://a.example/1", "every": 99999999999999999999999}\n'
        '{"url": "https://a.example/2", "every": true}\n{"url": "https://a.example/3", "every": 31622400}\n'
    )
    report = json.loads(runner.invoke(app, ["monitor", "import", str(tmp_path / "m.jsonl"), "--json"]).stdout)
    assert report["imported"] == 1 and [b["line"] for b in report["bad_rows"]] == [1, 2], report
    assert report["bad_rows"][0]["error"].startswith("every: at most 31622400 seconds (a year)")


def test_monitor_edit_changes_what_is_given_and_keeps_the_rest() -> None:
    from pipeline import queries
    from pipeline.cli.common import engine

    run("monitor", "add", "https://example.com/kettle", "--selector", ".price", "--rule", "price < 100",
        "--notify", "https://hooks.example.com/a")  # fmt: skip
    queries.update_monitor(engine(), 1, {"next_check_at": datetime.now(UTC) + timedelta(hours=1)})  # checked once
    code, out = run("monitor", "edit", "1", "--selector", "#price", "--notify", "https://hooks.example.com/b",
                    "--notify", "https://hooks.example.com/c", "--every", "600")  # fmt: skip
    assert (code, out) == (0, "edited monitor 1: every, notify, selector\n")
    shown = json.loads(run("monitor", "show", "1", "--json")[1])
    assert (shown["selector"], shown["rule"], shown["every"]) == ("#price", "price < 100", 600)
    due = datetime.fromisoformat(shown["next_check_at"])  # was an hour away: the shorter interval starts now
    assert due.replace(tzinfo=UTC) <= datetime.now(UTC) + timedelta(seconds=601)
    assert shown["notify"] == ["https://hooks.example.com/…"] * 2  # both, shown without their paths (tokens)
    assert run("monitor", "edit", "1", "--rule", "", "--notify", "")[0] == 0  # back to "changed", no targets
    shown = json.loads(run("monitor", "show", "1", "--json")[1])
    assert (shown["rule"], shown["notify"]) == (None, [])
    assert run("monitor", "edit", "1", "--browser", "--wait-for", "#price")[0] == 0
    assert run("monitor", "edit", "1", "--http")[0] == 0
    shown = json.loads(run("monitor", "show", "1", "--json")[1])
    assert (shown["fetch"], shown["wait_for"]) == ("http", None)  # only a browser waits for a selector


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["2", "--rule", "changed"], "no monitor 2"),
        (["1"], "nothing to change"),
        (["1", "--rule", "price <<< 3"], "rule"),
        (["1", "--selector", "p[[["], "selector"),
        (["1", "--url", "ftp://example.com/"], "url"),
        (["1", "--every", "5"], "--every"),
        (["1", "--wait-for", "#x"], "--wait-for needs --browser"),
        (["1", "--name", "   "], "--name cannot be empty"),
        (["1", "--name", "n" * 201], "at most 200"),
    ],
)
def test_monitor_edit_refuses_bad_input_and_changes_nothing(args: list[str], message: str) -> None:
    run("monitor", "add", "https://example.com/kettle", "--rule", "price < 100")
    code, out = run("monitor", "edit", *args)
    assert code == 2 and message in out and "Traceback" not in out, out
    assert json.loads(run("monitor", "show", "1", "--json")[1])["rule"] == "price < 100"
