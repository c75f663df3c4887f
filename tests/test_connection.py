"""Connecting: the embedded default, authentication, and old servers."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.errors import ConnectionFailed

from pipeline.broker import JetStreamBroker
from pipeline.nats_server import NatsServer, reachable


def test_without_a_url_an_embedded_server_is_started_and_shared(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("PIPELINE_NATS_URL", raising=False)
    first = JetStreamBroker(home=tmp_path)
    first.declare_queue("embedded")
    first.enqueue(dramatiq.Message(queue_name="embedded", actor_name="x", args=(), kwargs={}, options={}))

    second = JetStreamBroker(home=tmp_path)  # another process would find it the same way
    second.declare_queue("embedded")
    assert second.lag() == {"embedded": 1}
    assert second.url == first.url
    assert (tmp_path / "jetstream").is_dir()
    first.close()
    second.close()


def test_the_embedded_server_stops_with_the_process_that_started_it(tmp_path) -> None:
    script = (
        "import sys; from pipeline.broker import JetStreamBroker;"
        f"b = JetStreamBroker(home={str(tmp_path)!r}); b.declare_queue('q'); b.lag(); print(b.url, flush=True)"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "PIPELINE_NATS_URL"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    url = out.stdout.strip()
    assert url.startswith("nats://127.0.0.1:"), out.stderr
    port = int(url.rsplit(":", 1)[1])
    time.sleep(0.5)
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def test_pipeline_nats_url_is_read_from_the_environment(nats_server, monkeypatch) -> None:
    monkeypatch.setenv("PIPELINE_NATS_URL", nats_server.url)
    broker = JetStreamBroker(prefix="env" + uuid.uuid4().hex[:6])
    broker.declare_queue("q")
    assert broker.lag() == {"q": 0}
    assert broker.url == nats_server.url
    broker.close()


@pytest.fixture
def secured_server(tmp_path):
    conf = tmp_path / "auth.conf"
    conf.write_text('authorization { users = [ { user: "pipeline", password: "s3cret-pass" } ] }\n')
    with NatsServer(tmp_path / "nats", extra_args=("--config", str(conf))) as server:
        yield server


def test_user_and_password(secured_server) -> None:
    broker = JetStreamBroker(secured_server.url, user="pipeline", password="s3cret-pass")
    broker.declare_queue("auth")
    assert broker.lag() == {"auth": 0}
    broker.close()

    url_broker = JetStreamBroker(secured_server.url.replace("nats://", "nats://pipeline:s3cret-pass@"))
    url_broker.declare_queue("auth")
    assert url_broker.lag() == {"auth": 0}
    url_broker.close()


def test_bad_credentials_fail_clearly_without_showing_the_secret(secured_server) -> None:
    url = secured_server.url.replace("nats://", "nats://pipeline:wrong-pass@")
    broker = JetStreamBroker(url)
    broker.declare_queue("auth")
    with pytest.raises(ConnectionFailed) as raised:
        broker.lag()
    assert "wrong-pass" not in str(raised.value)
    assert "***@127.0.0.1" in str(raised.value)


def test_token(tmp_path) -> None:
    with NatsServer(tmp_path / "nats", extra_args=("--auth", "tok-123")) as server:
        broker = JetStreamBroker(server.url, token="tok-123")
        broker.declare_queue("auth")
        assert broker.lag() == {"auth": 0}
        broker.close()


@pytest.mark.skipif(not reachable(4222), reason="no nats-server (e.g. Debian's 2.9) on 127.0.0.1:4222")
def test_delays_and_retries_on_a_server_without_message_schedules() -> None:
    broker = JetStreamBroker("nats://127.0.0.1:4222", prefix="old" + uuid.uuid4().hex[:8])
    dramatiq.set_broker(broker)
    if broker.server_supports_schedules:
        pytest.skip("the server on 4222 has message schedules; this test is for older ones")
    runs: list[float] = []

    @dramatiq.actor(queue_name="old", max_retries=2, min_backoff=200, max_backoff=300)
    def flaky() -> None:
        runs.append(time.monotonic())
        if len(runs) < 2:
            raise RuntimeError("once")

    @dramatiq.actor(queue_name="old")
    def later() -> None:
        runs.append(-time.monotonic())

    worker = Worker(broker, worker_timeout=100, worker_threads=2)
    worker.start()
    try:
        sent = time.monotonic()
        later.send_with_options(delay=1000)
        assert broker.lag() == {"old": 0}  # held by the 'delayed' consumer, not lag
        flaky.send()
        broker.join("old", timeout=15_000)
    finally:
        worker.stop()
        for stream in (broker.names("old").stream, f"{broker.prefix}_dead"):
            broker.run(broker.js.delete_stream(stream))
        broker.close()

    later_ran = [-t for t in runs if t < 0]
    assert len(later_ran) == 1 and later_ran[0] - sent >= 0.95
    assert len([t for t in runs if t > 0]) == 2
