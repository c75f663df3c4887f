"""The one-machine autoscaler: a burst into one queue grows that queue's pool only, and it shrinks after."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dramatiq

from pipeline.autoscale import Autoscaler, Policy
from pipeline.broker import JetStreamBroker
from pipeline.nats_server import NatsServer
from pipeline.workers import WorkerPool
from tests.conftest import children, read_records, wait_for

BURST = 300


def test_a_burst_grows_only_its_pool_and_every_message_runs_once(
    nats_server: NatsServer, prefix: str, record_file: Path, tmp_path: Path, make_broker
) -> None:
    broker: JetStreamBroker = make_broker()
    env = dict(os.environ, PIPELINE_NATS_URL=nats_server.url, TEST_PREFIX=prefix, TEST_RECORD_FILE=str(record_file))
    pools = {
        queue: WorkerPool(queue, env=env, threads=2, log_dir=tmp_path / "logs", module="tests.workerapp")
        for queue in ("work", "idle")
    }
    policies = {
        "work": Policy(
            "work", min_replicas=1, max_replicas=3, lag_threshold=50, cooldown=5, polling=0.5, down_window=3
        ),
        "idle": Policy(
            "idle", min_replicas=0, max_replicas=3, lag_threshold=50, cooldown=5, polling=0.5, down_window=3
        ),
    }
    for queue in pools:
        broker.declare_queue(queue)
    autoscaler = Autoscaler(broker.lag, pools, policies)
    autoscaler.start()
    try:
        assert wait_for(lambda: pools["work"].size == 1, 10), "the minimum was not started"
        with broker.batch():
            for n in range(BURST):
                broker.enqueue(dramatiq.Message(queue_name="work", actor_name="work", args=(n,),
                                                kwargs={"sleep": 0.05}, options={}))  # fmt: skip
        sizes: list[tuple[int, int]] = []

        def grown() -> bool:
            sizes.append((pools["work"].size, pools["idle"].size))
            return pools["work"].size == 3

        assert wait_for(grown, 5), f"work did not reach 3 processes within a few polls: {sizes[-5:]}"
        assert wait_for(lambda: len(read_records(record_file)) >= BURST, 60), "the burst was not drained"
        assert wait_for(lambda: pools["work"].size == 1, 20), "work did not shrink back after its cooldown"
        assert all(idle == 0 for _, idle in sizes), "the idle queue's pool grew"
        assert pools["idle"].size == 0
    finally:
        autoscaler.stop()
        for pool in pools.values():
            pool.stop()
    values = [value for value, _ in read_records(record_file)]
    assert sorted(values, key=int) == [str(n) for n in range(BURST)], "a message was lost or ran twice"
    assert len({pid for _, pid in read_records(record_file)}) >= 2, "the burst ran on one process only"


def test_scaling_down_under_load_loses_nothing_and_runs_nothing_twice(
    nats_server: NatsServer, prefix: str, record_file: Path, tmp_path: Path, make_broker
) -> None:
    """Replicas dropped mid-burst finish what they started and hand back what they had only prefetched."""
    broker: JetStreamBroker = make_broker()
    env = dict(os.environ, PIPELINE_NATS_URL=nats_server.url, TEST_PREFIX=prefix, TEST_RECORD_FILE=str(record_file))
    pool = WorkerPool("work", env=env, threads=2, log_dir=tmp_path / "logs", module="tests.workerapp")
    broker.declare_queue("work")
    total = 300
    with broker.batch():
        for n in range(total):
            broker.enqueue(dramatiq.Message(queue_name="work", actor_name="work", args=(n,),
                                            kwargs={"sleep": 0.1, "mark_start": True}, options={}))  # fmt: skip
    pool.resize(3)
    try:
        assert wait_for(lambda: len({pid for _, pid in read_records(record_file)}) == 3, 30), "3 replicas never ran"
        pool.resize(1)
        assert pool.size == 1 and pool.draining == 2
        assert wait_for(lambda: pool.draining == 0, 30), "the dropped replicas did not finish within 30 s"
        after_drop = len(read_records(record_file))
        assert after_drop < total, "half the burst was done before the scale-down: it tested little"
        assert wait_for(lambda: sum(not v.startswith("start:") for v, _ in read_records(record_file)) >= total, 90)
    finally:
        pool.stop()
    records = read_records(record_file)
    started = sorted((int(v.removeprefix("start:")) for v, _ in records if v.startswith("start:")))
    finished = sorted(int(v) for v, _ in records if not v.startswith("start:"))
    assert finished == list(range(total)), "a message was lost or finished twice"
    assert started == list(range(total)), "a message was started twice (a dropped replica's work was redone)"
    assert len({pid for _, pid in records[after_drop:]}) == 1, "a dropped replica went on working"


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for whoever adopted it to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_a_killed_replicas_worker_processes_end_with_it(
    nats_server: NatsServer, prefix: str, record_file: Path, tmp_path: Path
) -> None:
    """kill -9 of a replica's main ``dramatiq`` process leaves no orphaned worker process consuming beside
    the replica that replaces it (found by a new-user trial: they outlived even the pool's stop)."""
    env = dict(os.environ, PIPELINE_NATS_URL=nats_server.url, TEST_PREFIX=prefix, TEST_RECORD_FILE=str(record_file))
    pool = WorkerPool("work", env=env, processes=2, threads=1, log_dir=tmp_path / "logs", module="tests.workerapp")
    pool.resize(1)
    try:
        [main] = pool._replicas
        assert wait_for(lambda: len(children(main.pid)) == 2, 30), "the replica's two worker processes never started"
        workers = children(main.pid)
        os.kill(main.pid, signal.SIGKILL)
        main.wait(10)
        assert pool.size == 0  # noticed, and what it left is ended
        assert wait_for(lambda: not [w for w in workers if _alive(w)], 10), "its worker processes live on, orphaned"
    finally:
        pool.stop()


def test_pipeline_autoscale_runs_each_pools_minimum_and_stops_them_on_sigterm(
    nats_server: NatsServer, prefix: str, tmp_path: Path
) -> None:
    env = dict(os.environ, PIPELINE_NATS_URL=nats_server.url, PIPELINE_PREFIX=prefix)
    command = [str(Path(sys.executable).parent / "pipeline"), "autoscale", "--queue", "fetch", "--queue", "alert"]
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        # fetch's minimum is one replica, alert's is none while its queue is empty.
        assert wait_for(lambda: len(children(process.pid)) == 1, 20), "fetch's replica was not started"
        [replica] = children(process.pid)

        def command() -> str:  # empty, or the parent's, until the replica's exec has happened
            return Path(f"/proc/{replica}/cmdline").read_text().replace("\0", " ")

        assert wait_for(lambda: "--queues fetch" in command(), 10), command()
        time.sleep(6)  # past a polling interval: the alert pool has been decided on again
        assert len(children(process.pid)) == 1, "the alert pool started with nothing to do"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            for pid in children(process.pid):
                os.killpg(pid, signal.SIGKILL)
            process.kill()
            raise
    assert process.returncode == 0, output
    assert "Autoscaling fetch (1..20), alert (0..5) replicas in all, shared with other machines" in output
    assert not Path(f"/proc/{replica}").exists(), "the replica outlived the autoscaler"


def test_a_killed_workers_gauge_is_forgotten_and_a_live_ones_kept(tmp_path: Path) -> None:
    """A worker killed without Dramatiq's clean-up must not count as a live worker on the dashboards."""
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    from pipeline.observability import forget_dead_processes

    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    gauge = "from pipeline import metrics; metrics.WORKER_PROCESSES.labels('fetch').set(1); print(flush=True)"
    subprocess.run([sys.executable, "-c", gauge], env=env, check=True)  # exits with its gauge file left behind
    live = subprocess.Popen([sys.executable, "-c", gauge + "; import time; time.sleep(60)"], env=env,
                            stdout=subprocess.PIPE)  # fmt: skip
    try:
        assert live.stdout is not None and live.stdout.readline()  # its gauge is written

        def workers() -> str:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=str(tmp_path))
            return next(
                line
                for line in generate_latest(registry).decode().splitlines()
                if line.startswith("pipeline_worker_processes{")
            )

        assert workers().endswith(" 2.0"), "the dead worker's gauge was not there to begin with"
        forget_dead_processes(tmp_path)
        assert workers().endswith(" 1.0")
    finally:
        live.kill()
        live.wait()


class CountingPool:
    """A pool that only counts: what two machines' autoscalers run, without starting processes."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self.size = 0

    def resize(self, size: int) -> None:
        self.size = size


def test_two_machines_share_one_desired_count_and_a_dead_ones_share_comes_back(make_broker, prefix: str) -> None:
    """Lag 700, threshold 200: the policy wants 4 replicas of fetch in all, not 4 per machine."""
    from pipeline.members import Membership

    policy = {"fetch": Policy("fetch", min_replicas=0, max_replicas=10, lag_threshold=200, polling=1.0)}
    machines = []
    for name in ("machine-a", "machine-b"):
        membership = Membership(make_broker(prefix=prefix), ["fetch"], ttl=2.0, name=name)
        pools = {"fetch": CountingPool("fetch")}
        autoscaler = Autoscaler(lambda _: {"fetch": 700}, pools, policy, members=membership.heartbeat, me=name)
        machines.append((membership, pools["fetch"], autoscaler))
    for _, _, autoscaler in machines:
        autoscaler.step()  # both registered now: the next step of each sees the other
    for _, _, autoscaler in machines:
        autoscaler.step()
    assert [pool.size for _, pool, _ in machines] == [2, 2]

    # machine-b dies (no leave, no more heartbeats): within the TTL plus a poll, a takes the whole count
    a_membership, a_pool, a = machines[0]
    assert wait_for(lambda: a.step()["fetch"] == 4, 6), f"machine-a still runs {a_pool.size}"
    assert a_pool.size == 4

    # a clean stop gives the share back at once
    b_membership, b_pool, b = machines[1]
    b.step()
    a.step()
    assert (a_pool.size, b_pool.size) == (2, 2)
    b_membership.leave()
    assert a.step()["fetch"] == 4
    a_membership.leave()


def test_on_one_machine_the_pools_fit_its_budget_in_the_policys_proportions() -> None:
    """Every stage backed up: the policy wants 46 processes; a 2-core machine runs 4, each stage at least one."""
    policies = {
        "fetch": Policy("fetch", min_replicas=1, max_replicas=20, lag_threshold=200, processes=1),
        "scrape": Policy("scrape", min_replicas=1, max_replicas=10, lag_threshold=100, processes=2),
        "analyse": Policy("analyse", min_replicas=0, max_replicas=8, lag_threshold=50, processes=1),
        "alert": Policy("alert", min_replicas=0, max_replicas=5, lag_threshold=50, processes=1),
    }
    pools = {queue: CountingPool(queue) for queue in policies}
    lags = {"fetch": 4000, "scrape": 1000, "analyse": 10, "alert": 0}
    autoscaler = Autoscaler(lambda _: lags, pools, policies, budget=6)
    for _ in range(10):  # the rate policies let the counts climb over a few polls
        sizes = autoscaler.step()
    assert autoscaler.scalers["fetch"].replicas > 4  # the policy itself wants many more
    assert sum(sizes[q] * policies[q].processes for q in sizes) <= 6
    assert sizes["analyse"] == 1 and sizes["alert"] == 0  # a stage with work gets one; one without, none
    assert sizes["fetch"] >= sizes["scrape"] >= 1


def test_a_replica_started_from_a_thread_outlives_that_thread(
    nats_server: NatsServer, prefix: str, record_file: Path, tmp_path: Path, make_broker
) -> None:
    """The autoscaler starts replicas from its thread, which ends at a stop before the pools do.  Linux's
    parent-death signal follows the thread that forked, so a replica must not be that thread's child:
    it would get SIGTERM at the thread's end, then the pool's own, which Dramatiq takes as "kill now"."""
    broker: JetStreamBroker = make_broker()
    broker.declare_queue("work")
    env = dict(os.environ, PIPELINE_NATS_URL=nats_server.url, TEST_PREFIX=prefix, TEST_RECORD_FILE=str(record_file))
    pool = WorkerPool("work", env=env, threads=1, log_dir=tmp_path / "logs", module="tests.workerapp")
    starter = threading.Thread(target=pool.resize, args=(1,))
    starter.start()
    starter.join()  # the thread that started the replica has ended
    try:
        broker.enqueue(dramatiq.Message(queue_name="work", actor_name="work", args=(1,), kwargs={}, options={}))
        assert wait_for(lambda: read_records(record_file), 30), "the replica did not outlive the thread that started it"
        assert pool.size == 1
    finally:
        pool.stop()
