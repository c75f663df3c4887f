"""The stages' work on real parts (SQLite, NATS Object Store, a local site), one stage at a time."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from sqlmodel import Session, select

from pipeline import stages
from pipeline.bodies import BodyStore
from pipeline.broker import JetStreamBroker
from pipeline.events import CheckEvent, ContentEvent
from pipeline.fetcher import Fetcher
from pipeline.ingest import job_for
from pipeline.models import Alert, Check, Delivery, Finding, Snapshot
from pipeline.netguard import AddressPolicy
from pipeline.stages import Context
from pipeline.webhooks import new_secret
from tests.site import Page, Site


@pytest.fixture
def site() -> Iterator[Site]:
    with Site() as site:
        yield site


@pytest.fixture
def ctx(broker: JetStreamBroker, db_engine) -> Iterator[Context]:
    engine = db_engine
    ctx = Context(engine, BodyStore(broker), Fetcher(AddressPolicy.from_entries(["127.0.0.1"])), new_secret())
    yield ctx
    ctx.fetcher.close()


def run_through(ctx: Context, job: dict) -> list[tuple[str, dict]]:
    """fetch -> scrape -> analyse -> alert in this thread; returns each hand-over."""
    handed: list[tuple[str, dict]] = []

    def to(stage_name: str, stage) -> stages.Send:
        def send(next_job: dict) -> None:
            handed.append((stage_name, next_job))
            stage(next_job)

        return send

    def alert(j: dict) -> None:
        stages.alert(ctx, j)

    def analyse(j: dict) -> None:
        stages.analyse(ctx, j, to("alert", alert))

    def scrape(j: dict) -> None:
        stages.scrape(ctx, j, to("analyse", analyse))

    stages.fetch(ctx, job, to("scrape", scrape))
    return handed


def outcomes(ctx: Context) -> list[tuple[str, str]]:
    with Session(ctx.engine) as session:
        return [(c.stage, c.outcome) for c in session.exec(select(Check).order_by(Check.id)).all()]


def job(site: Site, **extra: object) -> dict:
    return {"source": site.url("/p"), "url": site.url("/p"), "selector": ".price", "notify": [site.url("/hook")],
            **extra}  # fmt: skip


def test_a_304_stops_at_fetch(ctx: Context, site: Site) -> None:
    def conditional(handler) -> Page:
        if handler.headers.get("If-None-Match") == '"v1"':
            return Page(b"", 304, {"ETag": '"v1"'})
        return Page(b"<p class='price'>Price 50</p>", headers={"Content-Type": "text/html", "ETag": '"v1"'})

    site.routes["/p"] = conditional
    assert [stage for stage, _ in run_through(ctx, job(site))] == ["scrape", "analyse", "alert"]
    assert run_through(ctx, job(site)) == []  # second check: If-None-Match, 304
    assert outcomes(ctx)[-1] == ("fetch", "unchanged")


def test_the_same_bytes_again_stop_at_fetch(ctx: Context, site: Site) -> None:
    """No validators from the server: fetch knows the bytes the latest text came from, and stops there."""
    site.routes["/p"] = Page(b"<p class='price'>Price 50</p><p>ad 1</p>")
    run_through(ctx, job(site))
    assert run_through(ctx, job(site)) == []  # the very same bytes: scrape never sees them
    assert outcomes(ctx)[-1] == ("fetch", "unchanged")

    site.routes["/p"] = Page(b"<p class='price'>Price 50</p><p>ad 2</p>")  # other bytes, the same watched text
    assert [stage for stage, _ in run_through(ctx, job(site))] == ["scrape"]
    assert outcomes(ctx)[-1] == ("scrape", "unchanged")
    assert run_through(ctx, job(site)) == []  # scrape told the snapshot these bytes: fetch stops them now
    assert outcomes(ctx)[-1] == ("fetch", "unchanged")

    # The same bytes under another selector are another input: scrape reads them.
    assert [stage for stage, _ in run_through(ctx, job(site, selector="p"))][:1] == ["scrape"]


def test_unchanged_content_stops_at_scrape(ctx: Context, site: Site) -> None:
    site.routes["/p"] = Page(b"<p class='price'>Price 50</p><p>ad 1</p>")
    run_through(ctx, job(site))
    site.routes["/p"] = Page(b"<p class='price'>  Price   50 </p><p>ad 2</p>")  # only whitespace and an ad changed
    assert [stage for stage, _ in run_through(ctx, job(site))] == ["scrape"]  # and no further
    assert outcomes(ctx)[-2:] == [("alert", "sent"), ("scrape", "unchanged")]  # one row per check: where it ended


def test_a_redelivered_message_sends_no_second_alert(ctx: Context, site: Site) -> None:
    site.routes["/p"] = Page(b"<p class='price'>Price 50</p>")
    handed = run_through(ctx, job(site, rule="price < 100"))
    analyse_job = dict(handed[1][1])
    alert_job = dict(handed[2][1])
    assert len(site.posts) == 1

    stages.analyse(ctx, analyse_job, lambda j: stages.alert(ctx, j))  # analyse redelivered
    stages.alert(ctx, alert_job)  # alert redelivered
    assert len(site.posts) == 1
    with Session(ctx.engine) as session:
        assert len(session.exec(select(Delivery)).all()) == 1


def test_the_alert_tells_what_analyse_stored_without_reading_it_back(ctx: Context, site: Site) -> None:
    from sqlalchemy import event

    site.routes["/p"] = Page(b"<p class='price'>Price 50</p>")
    read_findings: list[str] = []

    def watch(connection, cursor, statement: str, *args) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM findings" in statement:
            read_findings.append(statement)

    event.listen(ctx.engine, "before_cursor_execute", watch)
    handed = run_through(ctx, job(site, rule="price < 100"))
    event.remove(ctx.engine, "before_cursor_execute", watch)
    assert not read_findings, "the alert stage read back the finding analyse had just handed it"
    alert_job = dict(handed[2][1])
    with Session(ctx.engine) as session:
        [stored] = session.exec(select(Finding)).all()
    assert alert_job["finding"] == {"severity": stored.severity, "summary": stored.summary, "evidence": stored.evidence}
    [(_, _, sent)] = site.posts
    assert json.loads(sent)["data"]["summary"] == stored.summary

    # A message without it (a redelivered analyse, an older message) reads the finding back.
    with Session(ctx.engine) as session:
        session.get(Alert, 1).status = "failed"  # so the delivery runs again
        session.commit()
    del alert_job["finding"]
    stages.alert(ctx, alert_job)
    assert json.loads(site.posts[-1][2])["data"]["summary"] == stored.summary and len(site.posts) == 2


def test_a_failed_delivery_is_recorded_and_retried(ctx: Context, site: Site) -> None:
    site.routes["/p"] = Page(b"<p class='price'>Price 50</p>")
    site.post_status = 503
    with pytest.raises(stages.DeliveryError, match="HTTP 503"):
        run_through(ctx, job(site, rule="price < 100"))
    site.post_status = 200
    alert_job = {**job(site, rule="price < 100"), "finding_id": 1}
    stages.alert(ctx, alert_job)  # Dramatiq's retry
    with Session(ctx.engine) as session:
        attempts = [(d.attempt, d.ok, d.status_code) for d in session.exec(select(Delivery)).all()]
    assert attempts == [(1, False, 503), (2, True, 200)]


def test_apprise_targets_are_delivered_and_guarded(ctx: Context, site: Site) -> None:
    site.routes["/p"] = Page(b"<p class='price'>Price 50</p>")
    target = site.url("/json-hook").replace("http://", "json://")
    run_through(ctx, job(site, rule="price < 100", notify=[target]))
    [(path, _, body)] = site.posts
    assert path == "/json-hook" and b"price is 50" in body

    guarded = Context(ctx.engine, ctx.bodies, Fetcher(AddressPolicy()), ctx.webhook_secret)
    with pytest.raises(stages.DeliveryError, match="non-public address"):
        stages.alert(guarded, {**job(site, rule="price < 100", notify=["json://169.254.169.254/x"]), "finding_id": 1})
    guarded.fetcher.close()
    assert len(site.posts) == 1


def test_a_5_mb_page_never_rides_in_a_message(ctx: Context, site: Site) -> None:
    big = b"<html><body><p class='price'>Price 50</p>" + b"<p>filler text</p>" * 300_000 + b"</body></html>"
    assert len(big) > 5_000_000
    site.routes["/p"] = Page(big)
    ctx.fetcher.max_bytes = 8 * 1024 * 1024
    handed = run_through(ctx, job(site))
    scrape_job = handed[0][1]
    import dramatiq

    message = dramatiq.Message(queue_name="scrape", actor_name="scrape", args=(scrape_job,), kwargs={}, options={})
    assert len(message.encode()) < 2000  # the body went to the Object Store; the message carries its key
    assert ctx.bodies.get(scrape_job["body"]) == big


def test_politeness_books_each_check_its_own_turn_across_workers(broker: JetStreamBroker, make_broker) -> None:
    from pipeline.politeness import Politeness

    first, second = Politeness(broker, interval=1.0), Politeness(make_broker(), interval=1.0)  # two machines
    assert first.turn("shop.example").wait == 0
    turns = [second.turn("shop.example") for _ in range(3)]
    assert [round(turn.wait) for turn in turns] == [1, 2, 3]  # each the next free turn, an interval apart
    assert turns[2].at - turns[1].at == pytest.approx(1.0)
    assert second.turn("other.example").wait == 0  # hosts are independent


def test_a_check_goes_at_the_turn_it_booked_without_asking_again(
    ctx: Context, site: Site, broker: JetStreamBroker
) -> None:
    import time

    from pipeline.politeness import DELIVERED_SOONER, Politeness

    site.routes["/p"] = Page(b"<p class='price'>Price 50</p>")
    polite = Context(ctx.engine, ctx.bodies, ctx.fetcher, ctx.webhook_secret, Politeness(broker, interval=1.0))
    stages.fetch(polite, job(site), lambda j: None)
    with pytest.raises(stages.NotYetError) as busy:
        stages.fetch(polite, job(site), lambda j: None)
    booked = busy.value.turn_at
    assert booked is not None and 0.5 < busy.value.after + DELIVERED_SOONER <= 1.0
    with pytest.raises(stages.NotYetError) as early:  # delivered early: back at the same turn
        stages.fetch(polite, job(site), lambda j: None, turn_at=booked)
    assert early.value.turn_at == booked
    time.sleep(early.value.after)
    stages.fetch(polite, job(site), lambda j: None, turn_at=booked)  # its turn: it goes
    assert len([r for r in site.requests if r[0] == "/p"]) == 2
    assert polite.politeness is not None
    following = polite.politeness.turn("127.0.0.1")
    assert 0.5 < following.wait <= 1.05  # the turn after it: it did not book a second one


def test_a_check_late_for_its_turn_books_another(ctx: Context, site: Site, broker: JetStreamBroker) -> None:
    from pipeline.politeness import Politeness

    site.routes["/p"] = Page(b"<p class='price'>Price 50</p>")
    polite = Context(ctx.engine, ctx.bodies, ctx.fetcher, ctx.webhook_secret, Politeness(broker, interval=5.0))
    stages.fetch(polite, job(site), lambda j: None)  # now the host's next turn is 5 s away
    assert polite.politeness is not None
    stale = polite.politeness.clock() - 3.0  # a turn booked long ago, whose message was held up
    with pytest.raises(stages.NotYetError) as busy:
        stages.fetch(polite, job(site), lambda j: None, turn_at=stale)
    assert busy.value.turn_at is not None and busy.value.turn_at > stale + 5


def test_fetch_says_not_yet_when_the_host_was_just_fetched(ctx: Context, site: Site, broker: JetStreamBroker) -> None:
    from pipeline.politeness import Politeness

    site.routes["/p"] = Page(b"<p class='price'>Price 50</p>")
    polite = Context(ctx.engine, ctx.bodies, ctx.fetcher, ctx.webhook_secret, Politeness(broker, interval=5.0))
    stages.fetch(polite, job(site), lambda j: None)
    with pytest.raises(stages.NotYetError):
        stages.fetch(polite, job(site), lambda j: None)
    assert len([r for r in site.requests if r[0] == "/p"]) == 1


def test_a_batch_of_checks_ends_each_on_its_own(ctx: Context, site: Site) -> None:
    """fetch_batch: one read, the GETs together, one commit; what it cannot finish is handed over with why."""
    from pipeline.fetcher import FetchError

    for name in ("same", "new"):
        site.routes[f"/{name}"] = Page(b"<p class='price'>Price 50</p>")
    site.routes["/down"] = Page(b"maintenance", 503, {"Retry-After": "7"})  # and no route for /gone: 404
    run_through(ctx, job(site, source="same", url=site.url("/same")))  # seen before: the same bytes come back
    jobs = [
        job(site, source=path, url=site.url(f"/{path}"), trace=f"t-{path}") for path in ("same", "new", "down", "gone")
    ]
    before = len(outcomes(ctx))
    scraped: list[dict] = []
    handed: list[tuple[str, Exception]] = []

    stages.fetch_batch(ctx, jobs, scraped.append, lambda j, why: handed.append((j["source"], why)))

    assert [j["source"] for j in scraped] == ["new"]
    assert [source for source, _ in handed] == ["down", "gone"]
    (_, down), (_, gone) = handed
    assert isinstance(down, FetchError) and down.transient and down.after == 7
    assert isinstance(gone, FetchError) and not gone.transient and "404" in gone.reason
    assert outcomes(ctx)[before:] == [("fetch", "unchanged"), ("fetch", "error"), ("fetch", "error")]


def test_a_batch_hands_over_the_checks_whose_host_is_busy(ctx: Context, site: Site, broker: JetStreamBroker) -> None:
    """Many pages of one shop in one batch: the first takes the host's turn, the others wait for theirs."""
    from pipeline.politeness import Politeness

    site.routes["/a"] = site.routes["/b"] = Page(b"<p class='price'>Price 50</p>")
    polite = Context(ctx.engine, ctx.bodies, ctx.fetcher, ctx.webhook_secret, Politeness(broker, interval=30.0))
    jobs = [job(site, source=path, url=site.url(f"/{path}")) for path in ("a", "b")]
    scraped: list[dict] = []
    handed: list[tuple[str, Exception]] = []

    stages.fetch_batch(polite, jobs, scraped.append, lambda j, why: handed.append((j["source"], why)))

    assert [j["source"] for j in scraped] == ["a"]
    [(source, why)] = handed
    assert source == "b" and isinstance(why, stages.NotYetError) and 25 < why.after <= 30
    assert [path for path, _ in site.requests] == ["/a"]  # b's turn comes later, in its own message
    assert outcomes(ctx) == []  # waiting for a turn is no attempt


def test_an_empty_batch_or_one_all_busy_reads_and_writes_nothing(ctx: Context) -> None:
    handed: list[dict] = []
    stages.fetch_batch(ctx, [], handed.append, lambda j, why: handed.append(j))
    assert handed == [] and outcomes(ctx) == []


def test_two_alert_messages_for_one_finding_deliver_once(ctx: Context, site: Site) -> None:
    """Two workers race on the same finding (a re-sent upstream message): one delivery."""
    import threading

    site.routes["/p"] = Page(b"<p class='price'>Price 50</p>")
    handed = run_through(ctx, job(site, rule="price < 100"))
    alert_job = dict(handed[2][1])
    with Session(ctx.engine) as session:  # as if the first delivery had failed: claimable again
        from pipeline.models import Alert

        record = session.exec(select(Alert)).one()
        record.status = "failed"
        session.add(record)
        session.commit()
    site.posts.clear()
    errors: list[BaseException] = []

    def deliver() -> None:
        try:
            stages.alert(ctx, alert_job)
        except stages.DeliveryError as e:  # the loser is told to retry later
            errors.append(e)

    workers = [threading.Thread(target=deliver) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(site.posts) <= 1
    stages.alert(ctx, alert_job)  # the loser's retry: already sent, nothing more
    assert len(site.posts) == 1


def test_a_retried_alert_keeps_its_webhook_id_which_no_other_database_gives(ctx: Context, site: Site) -> None:
    """Receivers drop a webhook-id they have seen: the id is the same on a retry (the first attempt got a
    500) and holds when the alert was made, so a fresh database's alert 1 is not taken for an old one's."""
    from pipeline.models import Alert

    site.routes["/p"] = Page(b"<p class='price'>Price 50</p>")
    site.post_status = 500
    with pytest.raises(stages.DeliveryError):
        run_through(ctx, job(site, rule="price < 100"))
    alert_job = {**site_alert_job(ctx, site)}
    site.post_status = 200
    stages.alert(ctx, alert_job)  # the retry: read back from the database, not made now
    with Session(ctx.engine) as session:
        record = session.exec(select(Alert)).one()
    ids = [headers["webhook-id"] for _, headers, _ in site.posts]
    assert len(ids) == 2 and ids[0] == ids[1]
    assert ids[0] == f"alert-{record.id}-{record.created_at.replace(tzinfo=None):%Y%m%dT%H%M%S%f}"


def site_alert_job(ctx: Context, site: Site) -> dict:
    """The alert message analyse sent for the only finding (as the failed attempt's retry would carry it)."""
    from pipeline.models import Finding

    with Session(ctx.engine) as session:
        finding = session.exec(select(Finding)).one()
    return {"source": site.url("/p"), "url": site.url("/p"), "finding_id": finding.id, "notify": [site.url("/hook")]}


def test_a_redelivered_scrape_hands_the_same_change_on(ctx: Context, site: Site) -> None:
    site.routes["/p"] = Page(b"<p class='price'>Price 50</p>")
    handed = run_through(ctx, job(site, trace="check-1"))
    scrape_job, analyse_job = handed[0][1], handed[1][1]
    again: list[dict] = []
    stages.scrape(ctx, scrape_job, again.append)  # e.g. the send to analyse was lost
    assert [(j["before_id"], j["after_id"]) for j in again] == [(analyse_job["before_id"], analyse_job["after_id"])]


def test_content_that_comes_back_alerts_again(ctx: Context, site: Site) -> None:
    rule = "/outage/i"
    for text in (b"all good", b"Major outage", b"all good", b"Major outage"):
        site.routes["/p"] = Page(b"<p class='price'>" + text + b"</p>")
        run_through(ctx, job(site, rule=rule))
    assert len(site.posts) == 2  # both outages, although the second looks like the first


def test_two_selectors_on_one_url_keep_their_own_history(ctx: Context, site: Site) -> None:
    def page(handler) -> Page:
        if handler.headers.get("If-None-Match") == '"v1"':
            return Page(b"", 304, {"ETag": '"v1"'})
        return Page(b"<p class='a'>A 1</p><p class='b'>B 2</p>", headers={"Content-Type": "text/html", "ETag": '"v1"'})

    site.routes["/p"] = page
    url = site.url("/p")
    watch_a = job_for(CheckEvent(url=url, selector=".a"), ctx)[1]
    watch_b = job_for(CheckEvent(url=url, selector=".b"), ctx)[1]
    assert watch_a["source"] != watch_b["source"]

    assert [stage for stage, _ in run_through(ctx, watch_a)] == ["scrape", "analyse"]
    # B has no history of its own: it must not send A's validators (and be told 304, and never see the page).
    assert [stage for stage, _ in run_through(ctx, watch_b)] == ["scrape", "analyse"]
    assert "If-None-Match" not in site.requests[-1][1]

    site.routes["/p"] = Page(b"<p class='a'>A 1</p><p class='b'>B 2</p>")  # no validators: scrape compares
    for watch in (watch_a, watch_b):  # each compares with its own snapshot: unchanged, nothing handed to analyse
        assert [stage for stage, _ in run_through(ctx, watch)] == ["scrape"]
    assert outcomes(ctx)[-2:] == [("scrape", "unchanged")] * 2


def test_one_url_written_two_ways_is_one_watched_thing(ctx: Context) -> None:
    def source(url: str) -> str:
        return job_for(CheckEvent(url=url, selector=".a"), ctx)[1]["source"]

    assert source("http://Example.COM:80/a/../p#top") == source("http://example.com/p")
    assert source("http://example.com/p?x=1") != source("http://example.com/p?x=2")
    assert "secret" not in source("http://user:secret@example.com/p")
    # Keyed by the deployment's secret: the digest is no offline test for a guessed password.
    import hashlib

    unkeyed = hashlib.sha256(b"fetch\nhttp://user:secret@example.com/p\n.a").hexdigest()[:16]
    assert not source("http://user:secret@example.com/p").endswith(unkeyed)


def test_pushed_content_keeps_its_utf8_whatever_its_meta_says(ctx: Context) -> None:
    event = ContentEvent(source="shop", content='<meta charset="shift_jis"><p class="t">Crème</p>', selector=".t")
    queue, job = job_for(event, ctx)
    handed: list[dict] = []
    stages.scrape(ctx, job, handed.append)
    with Session(ctx.engine) as session:
        [snapshot] = session.exec(select(Snapshot)).all()
    assert (queue, snapshot.text) == ("scrape", "Crème")


class RacingWrites:
    """The context's writes, each thread's first held until ``n`` threads are there: they have all read the
    source's latest snapshot before any stores its own, as checks running at once in two workers may."""

    def __init__(self, ctx: Context, n: int) -> None:
        import threading

        self.writes, self.barrier, self.seen = ctx.writes, threading.Barrier(n, timeout=10), threading.local()

    def run(self, unit):
        self._first()
        return self.writes.run(unit)

    def insert(self, table, row) -> None:
        self._first()
        self.writes.insert(table, row)

    def _first(self) -> None:
        if not getattr(self.seen, "waited", False):
            self.seen.waited = True
            self.barrier.wait()


def scrape_at_once(ctx: Context, jobs: list[dict]) -> list[dict]:
    """Scrape ``jobs`` on a thread each, all reading before any writes; the jobs they hand to analyse."""
    from concurrent.futures import ThreadPoolExecutor

    racing = Context(ctx.engine, ctx.bodies, ctx.fetcher, ctx.webhook_secret)
    racing.__dict__["writes"] = RacingWrites(ctx, len(jobs))
    handed: list[dict] = []
    with ThreadPoolExecutor(len(jobs)) as pool:
        for done in [pool.submit(stages.scrape, racing, j, handed.append) for j in jobs]:
            done.result()
    return handed


def test_the_same_check_scraped_at_once_stores_one_change(ctx: Context, site: Site) -> None:
    """The same event published eight times and checked at the same moment: one snapshot, one change
    for analyse, seven checks that end unchanged (they alerted eight times before snapshots were
    unique per source and predecessor)."""
    site.routes["/p"] = Page(b"<p class='price'>Price 50</p>")
    [(_, scrape_job)] = run_through_fetch(ctx, job(site))
    copies = [{**scrape_job, "trace": f"copy-{i}"} for i in range(8)]

    handed = scrape_at_once(ctx, copies)

    assert len(handed) == 1 and handed[0]["before_id"] is None
    with Session(ctx.engine) as session:
        assert len(session.exec(select(Snapshot)).all()) == 1
    assert sorted(outcomes(ctx)) == [("scrape", "unchanged")] * 7


def test_two_changes_scraped_at_once_never_store_the_older_over_the_newer(ctx: Context, site: Site) -> None:
    """Two texts of one source at once: the page as read later is the latest, whichever stored first; the
    older text goes in before it (a change, then another) or not at all, never over it."""
    site.routes["/p"] = Page(b"<p class='price'>Price 50</p>")
    [(_, first)] = run_through_fetch(ctx, job(site))
    site.routes["/p"] = Page(b"<p class='price'>Price 60</p>")
    [(_, second)] = run_through_fetch(ctx, job(site))

    handed = scrape_at_once(ctx, [{**first, "trace": "a"}, {**second, "trace": "b"}])

    with Session(ctx.engine) as session:
        history = session.exec(select(Snapshot).order_by(Snapshot.id)).all()
    assert "60" in history[-1].text and [s.before_id for s in history] == [None, *(s.id for s in history[:-1])]
    assert len(handed) == len(history)
    assert outcomes(ctx) == ([] if len(history) == 2 else [("scrape", "superseded")])


def test_a_check_redelivered_after_a_later_one_stored_is_superseded(ctx: Context, site: Site) -> None:
    """A worker crashed holding a check of the page at 95; the page went to 90 and that check stored its text.
    The 95 check, redelivered, must not go over it: it would alert "95 (was 90)", then "90 (was 95)"."""
    site.routes["/p"] = Page(b"<p class='price'>Price 95</p>")
    [(_, older)] = run_through_fetch(ctx, job(site, trace="old"))
    site.routes["/p"] = Page(b"<p class='price'>Price 90</p>")
    [(_, newer)] = run_through_fetch(ctx, job(site, trace="new"))
    analysed: list[dict] = []
    stages.scrape(ctx, newer, analysed.append)
    stages.scrape(ctx, older, analysed.append)
    with Session(ctx.engine) as session:
        [snapshot] = session.exec(select(Snapshot)).all()
    assert "90" in snapshot.text and len(analysed) == 1
    assert outcomes(ctx) == [("scrape", "superseded")]


def run_through_fetch(ctx: Context, check: dict) -> list[tuple[str, dict]]:
    handed: list[tuple[str, dict]] = []
    stages.fetch(ctx, check, lambda j: handed.append(("scrape", j)))
    return handed


def test_a_scrape_that_cannot_extract_records_its_attempt(ctx: Context, site: Site) -> None:
    from pipeline.content import ExtractError

    site.routes["/p"] = Page(b"<p class='other'>Price 50</p>")
    [(_, scrape_job)] = run_through_fetch(ctx, job(site))
    with pytest.raises(ExtractError):
        stages.scrape(ctx, scrape_job, lambda j: None)
    with Session(ctx.engine) as session:
        [check] = session.exec(select(Check)).all()
    assert (check.stage, check.outcome) == ("scrape", "error") and ".price" in check.detail


def test_an_analysis_that_fails_records_its_attempt(ctx: Context, site: Site) -> None:
    from pipeline.rules import RuleError

    site.routes["/p"] = Page(b"<p class='price'>Price 50</p>")
    [(_, scrape_job)] = run_through_fetch(ctx, job(site))
    analysed: list[dict] = []
    stages.scrape(ctx, scrape_job, analysed.append)
    with pytest.raises(RuleError):
        stages.analyse(ctx, {**analysed[0], "rule": "price <<< 3"}, lambda j: None)
    with Session(ctx.engine) as session:
        [check] = session.exec(select(Check)).all()
    assert (check.stage, check.outcome) == ("analyse", "error") and check.detail


def test_a_replayed_change_is_judged_by_its_monitor_as_it_is_now(ctx: Context, site: Site) -> None:
    """`pipeline dlq replay` of a check that died in analyse on a bad rule, once the rule is fixed: the worker
    reads the monitor (its own database, the pipeline's), not the rule the dead letter carries."""
    from pipeline.models import Monitor
    from pipeline.queries import remove_monitor
    from pipeline.rules import RuleError

    with Session(ctx.engine) as session:
        monitor = Monitor(name="shop", url=site.url("/p"), selector=".price", rule="price < 100",
                          notify=[site.url("/hook")])  # fmt: skip
        session.add(monitor)
        session.commit()
        source = f"monitor:{monitor.id}"
    site.routes["/p"] = Page(b"<p class='price'>Price 50</p>")
    [(_, scrape_job)] = run_through_fetch(ctx, job(site, source=source, rule="price <<< 100", notify=[]))
    analysed: list[dict] = []
    stages.scrape(ctx, scrape_job, analysed.append)
    with pytest.raises(RuleError):
        stages.analyse(ctx, analysed[0], lambda j: None)

    alerts: list[dict] = []
    stages.analyse(ctx, {**analysed[0], "replayed": True}, alerts.append)
    assert [(a["rule"], a["notify"]) for a in alerts] == [("price < 100", [site.url("/hook")])]
    assert "replayed" not in alerts[0]

    assert monitor.id is not None and remove_monitor(ctx.engine, monitor.id)
    with pytest.raises(stages.MonitorRemovedError, match="was removed"):
        stages.analyse(ctx, {**analysed[0], "replayed": True}, alerts.append)
    assert outcomes(ctx)[-1] == ("analyse", "error")


def test_copies_of_a_check_fetched_together_are_stored_in_the_order_their_pages_came(ctx: Context, site: Site) -> None:
    """Five copies of one check in one fetch batch, of a page whose number rises with every request, scraped in
    the reverse order: the newest page is the latest, and no older one goes over it."""
    import itertools

    served = itertools.count(1)
    site.routes["/p"] = lambda _handler: Page(f"<p class='price'>Price {next(served)}</p>".encode())
    copies = [job(site, trace=f"copy-{i}") for i in range(5)]
    scraped: list[dict] = []
    stages.fetch_batch(ctx, copies, scraped.append, lambda j, why: None)
    assert len({j["read_at"] for j in scraped}) == 5  # each copy's page has its own time

    for scrape_job in sorted(scraped, key=lambda j: j["read_at"], reverse=True):
        stages.scrape(ctx, scrape_job, lambda j: None)
    with Session(ctx.engine) as session:
        [latest] = session.exec(select(Snapshot)).all()
    newest = max(scraped, key=lambda j: j["read_at"])
    assert latest.text.encode() in ctx.bodies.get(newest["body"])  # "Price 5", unless the server sent 5 before 4
    assert outcomes(ctx) == [("scrape", "superseded")] * 4
