"""A three-node NATS cluster: one setting gives every asset three replicas; the pipeline rides out server loss."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import pytest
from typer.testing import CliRunner

from pipeline import runtime
from pipeline.bodies import INLINE_MAX
from pipeline.broker import JetStreamBroker
from pipeline.broker.assets import Asset
from pipeline.cli import app
from pipeline.ingest import Ingest
from pipeline.llm.cache import VerdictCache
from pipeline.names import STAGES
from pipeline.nats_server import NatsCluster, NatsServer
from pipeline.rules import Verdict
from pipeline.settings import configure, current
from pipeline.webhooks import new_secret
from tests.conftest import wait_for
from tests.site import Page, Site


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    with NatsCluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


@pytest.fixture
def on_cluster(cluster: NatsCluster, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("PIPELINE_NATS_URL", cluster.url)
    monkeypatch.setenv("PIPELINE_PREFIX", prefix)
    monkeypatch.setenv("PIPELINE_DATABASE_URL", f"sqlite:///{tmp_path / 'pipeline.db'}")
    runtime.reset()
    yield
    runtime.reset()


def use_every_asset(broker: JetStreamBroker) -> None:
    """What a running pipeline creates: stage streams, dead letters, events, both KV buckets, the object store."""
    for stage in STAGES:
        broker.declare_queue(stage)
    broker.lag(set(STAGES))  # streams are created on first use
    context = runtime.context(broker)
    Ingest(broker, context).declare()
    context.bodies.put(b"<p>a body</p>" * (INLINE_MAX // 10))  # above INLINE_MAX: it goes to the object store
    assert context.politeness is not None
    context.politeness.turn("example.com")
    VerdictCache(broker).put("k", Verdict(True, "info", "yes"))


EXPECTED_KINDS = {"stream": 7, "kv": 2, "objects": 1}  # 5 stages, dead letters, events; ratelimit, verdicts; bodies


def assets_after_use() -> list[Asset]:
    """A pipeline's assets once a broker built from the settings as they are now has used every one."""
    broker = JetStreamBroker(prefix=current().prefix)
    try:
        use_every_asset(broker)
        return broker.assets()
    finally:
        broker.close()


def test_one_setting_gives_every_asset_three_replicas(on_cluster: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_NATS_REPLICAS", "3")
    assets = assets_after_use()
    assert {kind: sum(a.kind == kind for a in assets) for kind in EXPECTED_KINDS} == EXPECTED_KINDS
    assert all(a.replicas == 3 and a.leader for a in assets), assets
    result = CliRunner().invoke(app, ["status", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)["assets"]
    assert len(shown) == len(assets) and {a["replicas"] for a in shown} == {3}
    assert {a["leader"] for a in shown} <= {"n0", "n1", "n2"}


def test_declaring_waits_while_too_few_servers_are_up_for_the_replicas() -> None:
    """ "No suitable peers for placement" (a server restarting, a cluster still forming) is waited out;
    any other refusal is raised at once."""
    from pipeline.broker.assets import NO_SUITABLE_PEERS, patiently

    answers: list[BaseException | str] = [
        nats.js.errors.BadRequestError(code=400, err_code=NO_SUITABLE_PEERS, description="no suitable peers"),
        nats.js.errors.BadRequestError(code=400, err_code=NO_SUITABLE_PEERS, description="no suitable peers"),
        "created",
    ]

    async def declare() -> str:
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    assert asyncio.run(patiently(declare, timeout=10)) == "created" and not answers

    async def refused() -> str:
        raise nats.js.errors.BadRequestError(code=400, err_code=10052, description="invalid config")

    with pytest.raises(nats.js.errors.BadRequestError):
        asyncio.run(patiently(refused, timeout=10))


def test_raising_the_setting_updates_the_existing_assets(on_cluster: None, monkeypatch: pytest.MonkeyPatch) -> None:
    assert {a.replicas for a in assets_after_use()} == {1}  # PIPELINE_NATS_REPLICAS unset
    runtime.reset()
    monkeypatch.setenv("PIPELINE_NATS_REPLICAS", "3")
    configure(None)
    assets = assets_after_use()
    assert len(assets) == sum(EXPECTED_KINDS.values())
    assert {a.replicas for a in assets} == {3}, assets


def leader_of(url: str, stream: str) -> str:
    """The server name leading ``stream`` now (waits through an election)."""

    async def ask() -> str:
        nc = await nats.connect(url.split(","))
        try:
            for _ in range(100):
                with contextlib.suppress(nats.errors.Error, TimeoutError):
                    info = await asyncio.wait_for(nc.jetstream().stream_info(stream), 1)
                    if info.cluster and info.cluster.leader:
                        return info.cluster.leader
                await asyncio.sleep(0.2)
        finally:
            await nc.close()
        raise AssertionError(f"{stream} has no leader")

    return asyncio.run(ask())


def publish_acknowledged(url: str, subject: str, events: list[dict]) -> int:
    """As the README's producers do: a JetStream publish per event, sent again until it is stored.

    Returns how many publishes had to be repeated (a leader election makes some go unanswered)."""

    async def go() -> int:
        nc = await nats.connect(url.split(","), max_reconnect_attempts=-1)
        js = nc.jetstream()
        repeated = 0
        for event in events:
            while True:
                try:
                    await js.publish(
                        subject, json.dumps(event).encode(), timeout=2, headers={"Nats-Msg-Id": event["url"]}
                    )
                    break
                except (nats.errors.Error, TimeoutError):
                    repeated += 1
                    await asyncio.sleep(0.5)
        await nc.close()
        return repeated

    return asyncio.run(go())


@dataclass
class UpRun:
    """A `pipeline up` of a test's own: its process, its log, the shop it watches and the receiver it alerts."""

    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log: Path
    events: list[dict[str, object]]
    receiver: Site

    def said(self, tail: int = 4000) -> str:
        return self.log.read_text()[-tail:]

    def alerted(self) -> list[str]:
        return [str(json.loads(body)["data"]["url"]) for _, _, body in self.receiver.posts]


@contextlib.contextmanager
def pipeline_up(url: str, prefix: str, tmp_path: Path, checks: int, **settings: str) -> Iterator[UpRun]:
    """`pipeline up --replicas 1` on ``url`` with a shop of ``checks`` pages, each a check whose price alerts;
    stopped with SIGTERM at the end, which it must survive to exit 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    env.update(
        PIPELINE_NATS_URL=url, PIPELINE_PREFIX=prefix, PIPELINE_HOME=str(tmp_path / "home"),
        PIPELINE_DATABASE_URL=f"sqlite:///{tmp_path / 'pipeline.db'}", PIPELINE_FETCH_ALLOW_HOSTS="127.0.0.1",
        PIPELINE_FETCH_DOMAIN_INTERVAL="0", PIPELINE_METRICS_PORT="0", PIPELINE_WEBHOOK_SECRET=new_secret(),
        **settings,
    )  # fmt: skip
    log_path = tmp_path / "up.log"
    with Site() as site, Site() as receiver, open(log_path, "w") as log:
        for i in range(checks):
            site.routes[f"/p/{i}"] = Page(f'<p class="p">{50 + i % 40}</p>'.encode())
        events = [{"url": site.url(f"/p/{i}"), "selector": ".p", "rule": "price < 100",
                   "notify": [receiver.url("/hook")]} for i in range(checks)]  # fmt: skip
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "up", "--replicas", "1", "--interval", "1"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        run = UpRun(env, process, log_path, events, receiver)
        try:
            assert wait_for(lambda: process.poll() is None and _exists(url, f"{prefix}-events"), 60), run.said()
            yield run
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    assert process.returncode == 0, run.said()


def test_pipeline_up_rides_out_the_loss_of_stream_leaders(cluster: NatsCluster, prefix: str, tmp_path: Path) -> None:
    """100 checks published with acks; the events stream's leader is killed, then the fetch stream's;
    every check alerts exactly once and `pipeline up` never exits."""
    killed: list[NatsServer] = []
    arrivals: list[tuple[float, int]] = []  # (when, alerts so far), sampled after the second kill
    try:
        with pipeline_up(cluster.url, prefix, tmp_path, 100, PIPELINE_NATS_REPLICAS="3") as up:
            subject = f"{prefix}.events.check"
            repeated = publish_acknowledged(cluster.url, subject, up.events[:50])

            victim = cluster.member(leader_of(cluster.url, f"{prefix}-events"))
            victim.kill()
            killed.append(victim)
            repeated += publish_acknowledged(cluster.url, subject, up.events[50:])
            victim.start()
            killed.remove(victim)

            assert wait_for(lambda: len(up.receiver.posts) >= 30, 120), up.said(3000)
            victim = cluster.member(leader_of(cluster.url, f"{prefix}_fetch"))
            victim.kill()
            killed.append(victim)
            time.sleep(5)
            victim.start()
            killed.remove(victim)

            def all_alerted() -> bool:
                arrivals.append((time.monotonic(), len(up.receiver.posts)))
                return len(set(up.alerted())) == 100

            missing = lambda: sorted({str(e["url"]) for e in up.events} - set(up.alerted()))  # noqa: E731
            assert wait_for(all_alerted, 180), f"missing {missing()}" + _diagnosis(up.env)
            time.sleep(3)  # a duplicate would come now, if at all
            alerted = up.alerted()
            assert sorted(alerted) == sorted(str(e["url"]) for e in up.events), "an alert was sent twice"
            assert up.process.poll() is None, "pipeline up exited:\n" + up.said()
            print(f"sent 100, alerted {len(set(alerted))}, duplicated {len(alerted) - len(set(alerted))}, "
                  f"publishes repeated {repeated}, longest stall {_longest_stall(arrivals):.1f} s")  # fmt: skip
    finally:
        for server in killed:
            server.start()


def test_pipeline_up_rides_out_a_single_server_restarted_after_five_seconds(
    own_nats_server: NatsServer, prefix: str, tmp_path: Path
) -> None:
    """One server, killed and back 5 s later (or once `up` has said it is away): `up` says so once each way,
    keeps running, and carries on."""
    url = own_nats_server.url
    with pipeline_up(url, prefix, tmp_path, 20) as up:
        subject = f"{prefix}.events.check"
        publish_acknowledged(url, subject, up.events[:10])
        assert wait_for(lambda: len(up.receiver.posts) == 10, 60), up.said(3000)

        own_nats_server.kill()
        away = time.monotonic()
        assert wait_for(lambda: "pipeline up: NATS unreachable since" in up.said(), 30)
        time.sleep(max(0.0, 5 - (time.monotonic() - away)))  # away at least 5 s
        assert up.process.poll() is None, "pipeline up exited while NATS was away:\n" + up.said(3000)
        own_nats_server.start()
        publish_acknowledged(url, subject, up.events[10:])
        assert wait_for(lambda: len(set(up.alerted())) == 20, 120), f"{len(up.receiver.posts)} alerts\n" + up.said()
        assert len(up.receiver.posts) == 20, "an alert was sent twice"
        assert up.process.poll() is None
        assert wait_for(lambda: "pipeline up: NATS is back (unreachable from" in up.said(), 10)
        said = up.log.read_text()
        assert said.count("pipeline up: NATS unreachable since") == 1, said[-3000:]
        assert said.count("NATS error: [Errno 111] Connection refused") <= 1, "every reconnect attempt logged"


def _longest_stall(arrivals: list[tuple[float, int]]) -> float:
    """The longest time the alert count stood still while alerts were still due."""
    longest, since, count = 0.0, None, -1
    for at, seen in arrivals:
        if seen != count:
            count, since = seen, at
        elif since is not None:
            longest = max(longest, at - since)
    return longest


def _diagnosis(env: dict[str, str]) -> str:
    """What the pipeline says about itself: dead letters, and each stage's checks."""
    said = []
    for command in (["dlq", "list", "--json"], ["status"]):
        run = subprocess.run([sys.executable, "-m", "pipeline.cli", *command], env=env, capture_output=True, text=True)
        said.append(run.stdout[-3000:] + run.stderr[-1000:])
    return "\n".join(said)


def _exists(url: str, stream: str) -> bool:
    async def ask() -> bool:
        nc = await nats.connect(url.split(","))
        try:
            await nc.jetstream().stream_info(stream)
            return True
        except nats.js.errors.NotFoundError:
            return False
        finally:
            await nc.close()

    return asyncio.run(ask())
