"""Fixtures: a real nats-server per session (and one per test that kills it)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from dramatiq import Worker
from sqlalchemy import text
from sqlalchemy.engine import Engine

from pipeline import settings
from pipeline.broker import JetStreamBroker
from pipeline.db import make_engine, migrate
from pipeline.nats_server import NatsServer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def fresh_settings() -> Iterator[None]:
    """Each test is a process of its own as far as settings go: they are loaded from the environment as the
    test has set it, when first asked for (as every entry point does once)."""
    settings.configure(None)
    yield
    settings.configure(None)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    with NatsServer(tmp_path_factory.mktemp("nats")) as server:
        yield server


@pytest.fixture
def own_nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A server this test alone may kill and restart."""
    server = NatsServer(tmp_path / "nats").start()
    yield server
    server.kill()


@pytest.fixture
def prefix() -> str:
    """A fresh stream/subject prefix: tests on the shared server do not see each other."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def make_broker(nats_server: NatsServer, prefix: str) -> Iterator[Callable[..., JetStreamBroker]]:
    brokers: list[JetStreamBroker] = []

    def make(url: str | None = None, **options: object) -> JetStreamBroker:
        options.setdefault("prefix", prefix)
        broker = JetStreamBroker(url or nats_server.url, **options)  # type: ignore[arg-type]
        brokers.append(broker)
        return broker

    yield make
    for broker in brokers:
        broker.close()


@pytest.fixture
def broker(make_broker: Callable[..., JetStreamBroker]) -> Iterator[JetStreamBroker]:
    broker = make_broker()
    dramatiq.set_broker(broker)
    yield broker


@pytest.fixture
def worker(broker: JetStreamBroker) -> Iterator[Worker]:
    worker = Worker(broker, worker_timeout=100, worker_threads=4)
    worker.start()
    yield worker
    worker.stop()


class WorkerProcess:
    """``dramatiq tests.workerapp`` in a process group of its own, so it can be SIGKILLed whole."""

    def __init__(self, environment: dict[str, str], threads: int = 4) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dramatiq", "tests.workerapp", "--processes", "1", "--threads", str(threads)],
            cwd=ROOT,
            env=environment,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=open(environment["TEST_RECORD_FILE"] + f".{uuid.uuid4().hex[:6]}.log", "w"),  # noqa: SIM115
        )

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout: float = 30) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def record_file(tmp_path: Path) -> Path:
    path = tmp_path / "record.txt"
    path.touch()
    return path


def children(pid: int) -> list[int]:
    """A process's children (Linux lists them per thread, and an autoscaler's thread spawns worker replicas)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


def read_records(path: Path) -> list[tuple[str, int]]:
    """(argument, pid) per processed message, as tests/workerapp.py writes them."""
    rows = []
    for line in path.read_text().splitlines():
        value, pid = line.split()
        rows.append((value, int(pid)))
    return rows


def load_script(path: Path) -> Any:
    """A script of the repository (not a package module), imported by path, e.g. grafana/dashboards.py."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@pytest.fixture
def spawn_workers(nats_server: NatsServer, prefix: str, record_file: Path) -> Iterator[Callable[..., WorkerProcess]]:
    processes: list[WorkerProcess] = []

    def spawn(url: str | None = None, ack_wait: float = 30, threads: int = 4, **extra_env: str) -> WorkerProcess:
        environment = dict(os.environ, **extra_env)
        environment.update(
            PIPELINE_NATS_URL=url or nats_server.url,
            TEST_PREFIX=prefix,
            TEST_ACK_WAIT=str(ack_wait),
            TEST_RECORD_FILE=str(record_file),
        )
        process = WorkerProcess(environment, threads=threads)
        processes.append(process)
        return process

    yield spawn
    for process in processes:
        process.kill()


BACKENDS = ["sqlite"] + (["postgresql"] if os.environ.get("PIPELINE_TEST_POSTGRES_URL") else [])


@pytest.fixture(params=BACKENDS)
def db_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'test.db'}")
        migrate(engine)
        yield engine
        engine.dispose()
        return
    # A schema of its own per test, so runs never see each other's rows.
    schema = "t_" + uuid.uuid4().hex[:10]
    admin = make_engine(os.environ["PIPELINE_TEST_POSTGRES_URL"])
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    url = os.environ["PIPELINE_TEST_POSTGRES_URL"]
    engine = make_engine(url + ("&" if "?" in url else "?") + f"options=-csearch_path%3D{schema}")
    migrate(engine)
    yield engine
    engine.dispose()
    with admin.begin() as connection:
        connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


# The live pipeline's fixtures, for every test module.
from tests.live import env, llm, pipeline  # noqa: E402, F401
