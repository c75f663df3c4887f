"""Failures as they really happen, against real servers: real worker processes (tests/live.py), NATS, HTTP."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from pipeline.broker import JetStreamBroker
from pipeline.cli import app
from pipeline.db import make_engine
from pipeline.deadletters import list_dead, replay
from pipeline.models import Alert, Delivery
from pipeline.names import events_stream
from tests.conftest import children, wait_for
from tests.live import publish
from tests.site import Page, Site, trickling_server


@pytest.fixture
def no_politeness(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Every check fetches from 127.0.0.1: no waiting a second between them (set before the workers start)."""
    env["PIPELINE_FETCH_DOMAIN_INTERVAL"] = "0"
    monkeypatch.setenv("PIPELINE_FETCH_DOMAIN_INTERVAL", "0")
    return env


@pytest.fixture
def busy_host(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Two seconds between fetches from one host (set before the workers start): every retry after a
    one-second Retry-After finds the host busy and is put back to wait."""
    env["PIPELINE_FETCH_DOMAIN_INTERVAL"] = "2"
    monkeypatch.setenv("PIPELINE_FETCH_DOMAIN_INTERVAL", "2")
    return env


@pytest.fixture
def quick_turns(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A fifth of a second between fetches from one host (set before the workers start)."""
    env["PIPELINE_FETCH_DOMAIN_INTERVAL"] = "0.2"
    monkeypatch.setenv("PIPELINE_FETCH_DOMAIN_INTERVAL", "0.2")
    return env


def test_checks_of_one_host_each_wait_for_a_turn_of_their_own(quick_turns, pipeline: JetStreamBroker) -> None:
    """30 checks of one host at once: each books the host's next free turn and comes back at it, so the fetch
    queue carries about two messages per check. Asking for a turn that starts now woke every waiting check
    at each turn: 70 checks of one host took 2,578 messages."""
    served: list[float] = []

    def page(_handler) -> Page:
        served.append(time.monotonic())
        return Page(b'<p class="p">42</p>')

    with Site() as shop:
        for i in range(30):
            shop.routes[f"/p/{i}"] = page
            publish(quick_turns, "check", {"url": shop.url(f"/p/{i}"), "selector": ".p"})
        assert wait_for(lambda: len(served) == 30, 60), len(served)
    fetch = pipeline.run(pipeline.js.stream_info(pipeline.names("fetch").stream))
    assert fetch.state.last_seq <= 3 * 30, fetch.state.last_seq  # was 30 * 29 / 2 put-backs and more
    gaps = [later - earlier for earlier, later in itertools.pairwise(served)]
    assert min(gaps) >= 0.2 * 0.5 - 0.02, gaps  # politeness.LATE: at least half an interval apart
    assert served[-1] - served[0] >= 29 * 0.2 * 0.9  # one host's turns, one after another


def test_waiting_for_a_busy_host_does_not_start_the_retries_over(busy_host, pipeline: JetStreamBroker) -> None:
    """A page that always answers 503 on a host politeness holds back: its retries run out (1 + 5 tries)
    and it is dead-lettered with the reason, instead of being retried for ever."""
    with Site() as shop:
        shop.routes["/down"] = lambda _handler: Page(b"maintenance", 503, {"Retry-After": "1"})
        publish(busy_host, "check", {"url": shop.url("/down")})
        assert wait_for(lambda: any(d.queue == "fetch" for d in list_dead(pipeline)), 90), shop.requests
        [dead] = [d for d in list_dead(pipeline) if d.queue == "fetch"]
        assert "503" in dead.reason
        time.sleep(4)  # a message started over would be fetched again by now
        assert [path for path, _ in shop.requests].count("/down") == 6


def test_a_page_that_answers_502_once_is_retried_and_alerts(env, pipeline: JetStreamBroker) -> None:
    answers = iter([Page(b"bad gateway", 502)])

    def flaky(_handler) -> Page:  # a proxy while the app restarts, then the app
        return next(answers, Page(b'<p class="p">89</p>'))

    with Site() as shop, Site() as receiver:
        shop.routes["/p"] = flaky
        publish(env, "check", {"url": shop.url("/p"), "selector": ".p", "rule": "price < 100",
                               "notify": [receiver.url("/hook")]})  # fmt: skip
        assert wait_for(lambda: len(receiver.posts) == 1, 90), "no alert after the 502"
        assert [path for path, _ in shop.requests] == ["/p", "/p"]
        assert json.loads(receiver.posts[0][2])["data"]["summary"] == "price is 89, < 100"
    assert pipeline.dead_letter_count("fetch") == 0


def test_check_gives_up_on_a_server_that_trickles_headers_within_20_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    """The status line, then `X-Wait: 1` every 2 s, forever."""
    monkeypatch.setenv("PIPELINE_FETCH_ALLOW_HOSTS", "127.0.0.1")
    started = time.monotonic()
    with trickling_server(2) as port:
        result = CliRunner().invoke(app, ["check", f"http://127.0.0.1:{port}/"])
    assert time.monotonic() - started < 20
    assert result.exit_code == 1 and "timed out after 15s" in result.stderr


@pytest.fixture
def hanging_receiver() -> Iterator[str]:
    """A webhook receiver that reads the request and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            held.append(connection)

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/hook"
    server.close()
    for connection in held:
        connection.close()


def test_a_hanging_receiver_does_not_hold_up_the_other_targets(env, pipeline, hanging_receiver: str) -> None:
    with Site() as shop, Site() as receiver:
        shop.routes["/p"] = Page(b'<p class="p">89</p>')
        started = time.monotonic()
        publish(env, "check", {"url": shop.url("/p"), "selector": ".p", "rule": "price < 100",
                               "notify": [hanging_receiver, receiver.url("/hook")]})  # fmt: skip
        assert wait_for(lambda: len(receiver.posts) == 1, 60)
        assert time.monotonic() - started < 12  # not after the hanging one's 15 s deadline


def test_an_attempt_cut_short_by_a_crash_is_recorded_as_unknown(env, pipeline: JetStreamBroker) -> None:
    """A worker killed after its POST, before recording it: the lease runs out, the alert goes again with
    the same webhook-id, and the history says the first attempt's outcome is unknown."""
    from datetime import timedelta

    from pipeline import stages
    from pipeline.models import Finding, Snapshot, utcnow

    engine = make_engine(env["PIPELINE_DATABASE_URL"])
    with Site() as receiver, Session(engine) as session:
        snapshot = Snapshot(source="monitor:1", content_hash="ab" * 32, text="price 89")
        session.add(snapshot)
        session.commit()
        finding = Finding(snapshot_id=snapshot.id, source="monitor:1", content_hash="ab" * 32, analyser="rules",
                          relevant=True, severity="warning", summary="price is 89, < 100")  # fmt: skip
        session.add(finding)
        session.commit()
        target = receiver.url("/hook")
        # What the crashed worker left: the alert claimed ("sending") a lease ago, no delivery recorded.
        lease_ran_out = utcnow() - stages.CLAIM_LEASE - timedelta(seconds=1)
        session.add(Alert(finding_id=finding.id, target=target, target_hash=stages._target_hash(target),
                          status="sending", claimed_at=lease_ran_out))  # fmt: skip
        session.commit()
        job = {"source": "monitor:1", "url": None, "finding_id": finding.id, "notify": [target], "trace": "crash-1"}
        import dramatiq

        pipeline.enqueue(dramatiq.Message(queue_name="alert", actor_name="alert", args=(job,), kwargs={}, options={}))
        assert wait_for(lambda: len(receiver.posts) == 1, 30)

        def history() -> list[tuple[int, bool, str]]:  # the POST arrives before the stage records it
            session.expire_all()
            return [(d.attempt, d.ok, d.error) for d in session.exec(select(Delivery).order_by(Delivery.attempt))]

        wait_for(lambda: len(history()) >= 2, 30)
    assert history() == [(1, False, stages.UNKNOWN_OUTCOME), (2, True, "")]
    assert stages.CLAIM_LEASE.total_seconds() <= 30


def _bad_events(n: int) -> list[tuple[str, bytes]]:
    """``n`` events of the kinds that looped or crashed before, round robin."""
    kinds = [
        ("monitor", b'{"monitor_id": 9223372036854775808}'),
        ("monitor", b'{"monitor_id": 1e29}'),
        ("monitor", b"[" * 10_000 + b"]" * 10_000),
        ("check", b'{"a": ' * 10_000 + b"1" + b"}" * 10_000),
        ("monitor", b'{"monitor_id": ' + b"7" * 5000 + b"}"),
        ("monitor", b'{"monitor_id": 424242}'),  # no such monitor
        ("check", b"not json at all"),
        ("check", b'{"url": "https://example.com", "rule": "price <"}'),
        ("check", b'{"url": "https://example.com", "selector": "p["}'),
        ("check", b'{"url": "ftp://example.com"}'),
        ("content", b'{"source": "x", "content": 5}'),
        ("nope", b"{}"),
    ]
    events = [kinds[i % len(kinds)] for i in range(n - 5)]
    long_url = json.dumps({"url": "https://example.com/" + "a" * 900_000}).encode()  # a valid URL of 900 KB
    return events + [("check", long_url)] * 5


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_a_flood_of_bad_events_among_good_ones(no_politeness, pipeline: JetStreamBroker) -> None:
    env = no_politeness
    good, bad = 200, 2000
    bad_events = _bad_events(bad)
    with Site() as shop, Site() as receiver:
        for i in range(good):
            shop.routes[f"/p/{i}"] = Page(f'<p class="p">{50 + i % 40}</p>'.encode())
        shop.routes["/warm-up"] = Page(b'<p class="p">1</p>')
        publish(env, "check", {"url": shop.url("/warm-up"), "selector": ".p", "notify": [receiver.url("/warm")]})
        assert wait_for(lambda: len(receiver.posts) == 1, 60)  # the ingest is up and has ingested once
        receiver.posts.clear()
        [ingest] = [pid for pid in children(os.getpid()) if b"scheduler" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        rss_before = _rss_kib(ingest)

        async def flood() -> None:
            nc = await nats.connect(env["PIPELINE_NATS_URL"])
            js = nc.jetstream()
            for i in range(bad):
                kind, data = bad_events[i]
                await js.publish(f"{env['PIPELINE_PREFIX']}.events.{kind}", data, timeout=10)
                if i % 10 == 0:
                    event = {"url": shop.url(f"/p/{i // 10}"), "selector": ".p", "rule": "price < 100",
                             "notify": [receiver.url("/hook")]}  # fmt: skip
                    await js.publish(f"{env['PIPELINE_PREFIX']}.events.check", json.dumps(event).encode())
            await nc.close()

        started = time.monotonic()
        asyncio.run(flood())
        dead = pipeline.dead_letter_count
        assert wait_for(lambda: dead("events") == bad, 180), dead("events")
        assert wait_for(lambda: len(receiver.posts) == good, 300), len(receiver.posts)
        took = time.monotonic() - started
    info = pipeline.run(pipeline.js.stream_info(events_stream(env["PIPELINE_PREFIX"])))
    rss_after = _rss_kib(ingest)
    letters = pipeline.run(pipeline.js.get_msg(f"{env['PIPELINE_PREFIX']}_dead", seq=1))
    print(f"\nflood: {good} good and {bad} bad events in {took:.1f} s: {len(receiver.posts)} alerts, "
          f"{pipeline.dead_letter_count('events')} dead letters, {info.state.messages} left in the events stream; "
          f"ingest RSS {rss_before // 1024} MiB before, {rss_after // 1024} MiB after")  # fmt: skip
    assert info.state.messages == 0
    assert letters.headers["Pipeline-Dead-Reason"]
    assert rss_after - rss_before < 64 * 1024  # bounded: a few large events parsed, no growth per event


def test_secrets_in_watched_urls_and_targets_stay_where_they_must(env, pipeline: JetStreamBroker, tmp_path) -> None:
    """A password and a token in the watched URL, keys in the targets: they reach the site and the receivers
    that must get them, and appear in no table, log, metric file, dead letter, payload or CLI output."""
    watched = ["S3cretPass", "T0kenValue"]
    targets = ["H00kKey", "JsonPass", "HeaderSecret"]
    runner = CliRunner()
    with Site() as shop, Site() as receiver:
        shop.routes["/page?token=T0kenValue"] = Page(b'<p class="p">89</p>')
        shop.routes["/gone?token=T0kenValue"] = Page(b"gone", 404)
        port = shop.port
        notify = [receiver.url("/hook?key=H00kKey"),
                  f"json://hookuser:JsonPass@127.0.0.1:{receiver.port}/json?+X-Api=HeaderSecret"]  # fmt: skip
        for path in ("/page", "/gone"):
            publish(env, "check", {"url": f"http://user:S3cretPass@127.0.0.1:{port}{path}?token=T0kenValue",
                                   "selector": ".p", "rule": "price < 100", "notify": notify})  # fmt: skip
        assert wait_for(lambda: len(receiver.posts) == 2, 60), receiver.posts
        assert wait_for(lambda: pipeline.dead_letter_count("fetch") == 1, 30)  # the 404: permanent
        assert runner.invoke(app, ["monitor", "add", f"http://user:S3cretPass@127.0.0.1:{port}/page",
                                   "--notify", notify[0]]).exit_code == 0  # fmt: skip
        outputs = [runner.invoke(app, args).output for args in (
            ["alerts"], ["status"], ["monitor", "list"], ["monitor", "list", "--json"], ["monitor", "show", "1"],
            ["dlq", "list"], ["dlq", "list", "--json"])]  # fmt: skip
        # The site got its credentials; each receiver got its own and none of the site's.
        assert "Authorization" in shop.requests[0][1]
        payloads = [path + json.dumps(headers) + body.decode() for path, headers, body in receiver.posts]
    assert not [s for s in watched if any(s in payload for payload in payloads)]

    engine = make_engine(env["PIPELINE_DATABASE_URL"])
    with engine.connect() as connection:
        from sqlalchemy import inspect, text

        for table in inspect(engine).get_table_names():
            rows = " ".join(map(str, connection.execute(text(f"SELECT * FROM {table}")).all()))
            allowed = watched[:1] + targets[:1] if table == "monitors" else []  # the monitor's own URL and target
            assert not [s for s in watched + targets if s in rows and s not in allowed], table
    dead = pipeline.run(pipeline.js.get_msg(f"{env['PIPELINE_PREFIX']}_dead", seq=1))
    logs = (tmp_path / "workers.log").read_text()
    metric_files = b"".join(p.read_bytes() for p in (tmp_path / "metrics").iterdir())
    for secret in watched + targets:
        assert secret not in logs, secret
        assert secret.encode() not in metric_files, secret
        assert not [out for out in outputs if secret in out], secret
        assert all(secret not in value for value in dead.headers.values()), secret


def test_a_runaway_rule_is_dead_lettered_and_holds_up_no_other_check(env, pipeline: JetStreamBroker) -> None:
    with Site() as receiver:
        publish(env, "content", {"source": "redos", "content": "<p class=x>" + "a" * 5000 + "!</p>", "selector": ".x",
                                 "rule": "/(a+)+$/", "notify": [receiver.url("/hook")]})  # fmt: skip
        publish(env, "content", {"source": "fine", "content": "<p class=x>89</p>", "selector": ".x",
                                 "rule": "price < 100", "notify": [receiver.url("/hook")]})  # fmt: skip
        assert wait_for(lambda: len(receiver.posts) == 1, 60), "the good check's alert did not arrive"
        assert wait_for(lambda: pipeline.dead_letter_count("analyse") == 1, 30)
    names = pipeline.names("analyse")
    last = pipeline.run(pipeline.js.get_last_msg(f"{pipeline.prefix}_dead", names.dead_subject))
    assert "took over 1s" in last.headers["Pipeline-Dead-Reason"]


def test_checks_ingested_together_fail_and_retry_each_on_its_own(no_politeness, make_broker, tmp_path) -> None:
    """Events waiting when the ingest starts travel as batches through every stage: a check that fails in
    one (fetch, scrape or alert) is retried or dead-lettered alone, the others alert, none runs twice."""
    from tests.live import declared, spawn

    env = no_politeness
    broker = declared(make_broker(prefix=env["PIPELINE_PREFIX"]))
    answers = iter([Page(b"maintenance", 503, {"Retry-After": "1"})])
    with Site() as shop, Site() as receiver, Site() as restarting:
        for i in range(10):
            shop.routes[f"/p/{i}"] = Page(f'<p class="p">{50 + i}</p>'.encode())
        shop.routes["/flaky"] = lambda _handler: next(answers, Page(b'<p class="p">70</p>'))  # and /gone: 404
        shop.routes["/moved"] = Page(b'<p class="price">70</p>')  # the selector matches nothing now
        restarting.post_status = 503  # one receiver is restarting: its first delivery fails
        for path in [*(f"/p/{i}" for i in range(10)), "/flaky", "/gone", "/moved"]:
            targets = [receiver.url("/hook")] + ([restarting.url("/hook")] if path == "/p/3" else [])
            publish(env, "check", {"url": shop.url(path), "selector": ".p", "rule": "price < 100",
                                   "notify": targets})  # fmt: skip
        processes = [spawn(env, tmp_path, "-m", "dramatiq", "actors", "--processes", "1", "--threads", "4"),
                     spawn(env, tmp_path, "-m", "pipeline.cli", "scheduler", "--port", "0")]  # fmt: skip
        try:
            assert wait_for(lambda: len(restarting.posts) == 1, 60)
            restarting.post_status = 200
            assert wait_for(lambda: len(receiver.posts) == 11 and len(restarting.posts) == 2, 90), (
                len(receiver.posts), len(restarting.posts))  # fmt: skip
            assert wait_for(lambda: len(list_dead(broker)) == 2, 30)
            time.sleep(2)  # a check run twice would have alerted again by now
            assert len(receiver.posts) == 11 and len(restarting.posts) == 2
            gone, moved = sorted(list_dead(broker), key=lambda d: d.queue)
            shop.routes["/gone"] = Page(b'<p class="p">80</p>')  # back: its dead letter, replayed, alerts
            replay(broker, gone)
            assert wait_for(lambda: len(receiver.posts) == 12, 30)
            shop.routes["/moved"] = Page(b'<p class="p">75</p>')  # the page fixed: its scrape letter, fetched again
            replay(broker, moved)
            assert wait_for(lambda: len(receiver.posts) == 13, 30)
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(30)
    assert (gone.queue, moved.queue) == ("fetch", "scrape")
    assert "HTTP 404" in gone.reason and gone.message_id.endswith("-fetch")  # a fetch message of its own
    assert "matched nothing" in moved.reason and moved.message_id.endswith("-scrape")
    paths = [path for path, _ in shop.requests]
    assert paths.count("/flaky") == 2  # the batch's try, then its own message's after the Retry-After
    assert paths.count("/gone") == 2 and paths.count("/moved") == 2  # what failed for good: tried again on replay only
    assert all(paths.count(f"/p/{i}") == 1 for i in range(10))


def test_the_same_event_many_times_in_one_burst_alerts_once(no_politeness, pipeline: JetStreamBroker) -> None:
    """A producer that publishes one check 16 times at once (a retry loop, a fan-out bug): the copies travel
    in one batch and are checked at the same moment, but the page changed once, so one alert."""
    with Site() as shop, Site() as receiver:
        shop.routes["/p"] = Page(b'<p class="p">42</p>')
        event = {"url": shop.url("/p"), "selector": ".p", "rule": "price < 100", "notify": [receiver.url("/hook")]}
        for _ in range(16):
            publish(no_politeness, "check", event)
        engine = make_engine(no_politeness["PIPELINE_DATABASE_URL"])
        assert wait_for(lambda: _checks_ended(engine) == 16, 60), _checks_ended(engine)
        time.sleep(1)
        assert len(receiver.posts) == 1


def _checks_ended(engine) -> int:
    from pipeline.models import Check

    with Session(engine) as session:
        return len(session.exec(select(Check)).all())


def test_a_monitors_dead_letter_replayed_after_an_edit_checks_it_as_it_is_now(
    no_politeness, pipeline: JetStreamBroker
) -> None:
    """The page moved its price to another element: the check dies in scrape. The user fixes the monitor's
    selector (`pipeline monitor edit`) and replays the letter: the page is fetched again and alerts, once."""
    runner = CliRunner()
    with Site() as shop, Site() as receiver:
        shop.routes["/p"] = Page(b'<p class="new-price">42</p>')
        added = runner.invoke(app, ["monitor", "add", shop.url("/p"), "--selector", ".price", "--rule",
                                    "price < 100", "--notify", receiver.url("/hook")])  # fmt: skip
        monitor_id = added.stdout.split()[0]  # due now: the scheduler publishes its first check
        assert wait_for(lambda: len(list_dead(pipeline)) == 1, 30)
        [letter] = list_dead(pipeline)
        assert (letter.queue, letter.source) == ("scrape", f"monitor:{monitor_id}")
        shown = runner.invoke(app, ["monitor", "show", monitor_id]).stdout
        assert "scrape  error" in shown and ".price" in shown  # the failed attempt, in the monitor's history

        assert runner.invoke(app, ["monitor", "edit", monitor_id, "--selector", ".new-price"]).exit_code == 0
        assert runner.invoke(app, ["dlq", "replay"]).stdout == "replayed 1\n"
        assert wait_for(lambda: len(receiver.posts) == 1, 30)
        time.sleep(1)
    assert len(receiver.posts) == 1 and list_dead(pipeline) == []
    assert json.loads(receiver.posts[0][2])["data"]["summary"] == "price is 42, < 100"


def test_a_batch_run_twice_hands_each_check_to_scrape_once(no_politeness, pipeline: JetStreamBroker) -> None:
    """A redelivered fetch_batch fetches again, but what it sends on is named by its checks' ids: JetStream
    drops the second copy, whatever the page says now."""
    import dramatiq

    served = iter(range(1000))
    with Site() as shop:
        shop.routes["/p"] = lambda _handler: Page(f'<p class="p">{next(served)}</p>'.encode())  # new bytes each time
        jobs = [{"source": f"s{i}", "url": shop.url("/p"), "selector": ".p", "rule": "price < 0", "question": None,
                 "notify": [], "trace": f"test-{i}"} for i in range(3)]  # fmt: skip
        for attempt in ("first", "again"):
            pipeline.enqueue(dramatiq.Message(queue_name="fetch", actor_name="fetch_batch", args=(jobs,),
                                              kwargs={}, options={}, message_id=f"batch-{attempt}"))  # fmt: skip
            assert wait_for(lambda n=attempt: len(shop.requests) == (3 if n == "first" else 6), 30)
    time.sleep(1)
    scrape = pipeline.run(pipeline.js.stream_info(pipeline.names("scrape").stream))
    assert scrape.state.last_seq == 1  # the three as one scrape_batch; the second run's, the same checks, dropped
