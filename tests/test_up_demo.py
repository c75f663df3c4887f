"""The README's main-job command: `pipeline up --demo` shows signed alerts within a minute."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from pipeline.names import STAGES
from tests.conftest import children, wait_for


def test_up_demo_shows_alerts_within_a_minute(tmp_path: Path) -> None:
    from pipeline.nats_server import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}  # the embedded defaults
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    port = free_port()
    env["PIPELINE_METRICS_PORT"] = str(port)  # the default, 9464, may be taken on a shared machine
    up = subprocess.Popen(
        [str(Path(sys.executable).parent / "pipeline"), "up", "--demo", "--interval", "5"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(up.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    started = time.monotonic()
    try:
        while time.monotonic() - started < 90 and not any(line.startswith("ALERT") for line in lines):
            time.sleep(0.2)
        alerts = [line for line in lines if line.startswith("ALERT")]
        assert alerts, "no alert within a minute:\n" + "".join(lines)
        assert "(signature ok)" in alerts[0]
        # Every process of `up` on one /metrics: the workers' (alerts sent) and up's own (events ingested).
        # The alert pool's minimum is 0: the autoscaler started it when the first alert was due; its gauge
        # comes with the autoscaler's next reading, so the page is read until it holds everything.
        expected = [
            'pipeline_alerts_total{channel="webhook",outcome="sent"}',
            'pipeline_events_total{kind="monitor",outcome="accepted"}',
            'pipeline_queue_lag{queue="fetch"}',
            'pipeline_worker_processes{queue="alert"} 1.0',
            'pipeline_worker_processes{queue="scrape"} 2.0',  # one replica: 2 processes
        ]
        metrics = ""

        def metrics_hold_everything() -> bool:
            nonlocal metrics
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                metrics = response.read().decode()
            return all(name in metrics for name in expected)

        assert wait_for(metrics_hold_everything, 30, interval=0.5), [name for name in expected if name not in metrics]
        # The status lines count what every stage did, not only where checks ended (at alert, here).
        for stage in ("fetch", "scrape", "analyse", "alert"):
            done = re.compile(rf"{stage}: lag \d+ done [1-9]")
            assert wait_for(lambda done=done: any(done.search(line) for line in lines), 20), f"{stage} never showed"
    finally:
        os.killpg(up.pid, signal.SIGINT)  # what Ctrl-C does
        assert up.wait(60) == 0
    reader.join(5)
    assert any("Stopping" in line for line in lines) and "Stopped" in lines[-1]
    # The demo kept to itself: a plain `pipeline` in the same directory sees none of its monitors or alerts.
    assert (tmp_path / ".pipeline" / "demo" / "pipeline.db").exists()
    plain = {**env, "PIPELINE_METRICS_PORT": "0"}
    listed = subprocess.run([str(Path(sys.executable).parent / "pipeline"), "monitor", "list", "--json"],
                            cwd=tmp_path, env=plain, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert (listed.returncode, listed.stdout.strip()) == (0, "[]"), listed.stderr


def test_up_runs_on_when_the_metrics_port_is_taken(tmp_path: Path, nats_server) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
        env.update(PIPELINE_NATS_URL=nats_server.url, PIPELINE_METRICS_PORT=str(port))
        result = subprocess.run(
            [str(Path(sys.executable).parent / "pipeline"), "up", "--duration", "2", "--interval", "1"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"warning: cannot serve metrics on port {port}" in result.stderr
    assert "lag 0" in result.stdout and "replicas" in result.stdout


def test_up_stops_gracefully_on_sigterm_and_leaves_no_worker_behind(tmp_path: Path, nats_server) -> None:
    """`kill`, `docker stop` and systemd send SIGTERM: the same orderly stop as Ctrl-C, every replica with it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(PIPELINE_NATS_URL=nats_server.url, PIPELINE_METRICS_PORT="0")
    up = subprocess.Popen(
        [str(Path(sys.executable).parent / "pipeline"), "up", "--interval", "1"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(up.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        wait_for(lambda: any("fetch: lag 0 done 0 replicas 1" in line for line in lines), 60)
        replicas = [Path(f"/proc/{pid}") for pid in children(up.pid)]  # `up` starts no other process here
        assert replicas, "no worker replica was running:\n" + "".join(lines)
    finally:
        up.send_signal(signal.SIGTERM)
        assert up.wait(60) == 0
    reader.join(5)
    assert any("Stopping" in line for line in lines)
    assert not [p for p in replicas if p.exists()], "a replica outlived `pipeline up`"


def test_workers_end_when_up_is_killed_with_sigkill(tmp_path: Path, nats_server) -> None:
    """However `pipeline up` dies, its replicas go with it (Linux's parent-death signal): none keeps
    consuming beside the next `up`'s pools."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(PIPELINE_NATS_URL=nats_server.url, PIPELINE_METRICS_PORT="0")
    up = subprocess.Popen(
        [str(Path(sys.executable).parent / "pipeline"), "up", "--interval", "1", "--replicas", "1"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert wait_for(lambda: len(children(up.pid)) == len(STAGES), 60), "a replica per stage did not start"
        replicas = [Path(f"/proc/{pid}") for pid in children(up.pid)]
    finally:
        up.kill()  # SIGKILL: no handler runs, nothing is stopped in order
        up.wait(10)
    assert wait_for(lambda: not [p for p in replicas if p.exists()], 60), "a replica outlived a killed `pipeline up`"


def test_the_demo_monitors_keep_their_ids_from_run_to_run(db_engine) -> None:  # type: ignore[no-untyped-def]
    from sqlmodel import Session, select

    from pipeline.demo import DemoSite, install_monitors
    from pipeline.models import Monitor

    first, second = DemoSite(lambda *_: None), DemoSite(lambda *_: None)
    try:
        ids = install_monitors(db_engine, first)
        with Session(db_engine) as session:  # a user paused one and added one of their own
            kettle = session.get(Monitor, ids[0])
            assert kettle is not None
            kettle.paused = True
            session.add(Monitor(name="mine", url="https://example.com/"))
            session.commit()
        assert install_monitors(db_engine, second) == ids  # `monitor show 1` is the kettle on every run
        with Session(db_engine) as session:
            monitors = session.exec(select(Monitor).order_by(Monitor.id)).all()  # type: ignore[arg-type]
        assert [m.url.startswith(second.url) for m in monitors] == [True, True, True, False]
        assert not any(m.paused for m in monitors[:3]) and monitors[3].name == "mine"
    finally:
        for site in (first, second):
            site.server.server_close()
