"""Several checks to a message: how the ingest groups them, and how a batch runs them."""

from __future__ import annotations

import threading
import time
from typing import Any

import dramatiq

from pipeline.batching import MAX_BYTES, MAX_CHECKS, each, groups
from pipeline.ingest import _fetch_batch, _Made


def made(n: int, padding: int = 0) -> _Made:
    job = {"source": f"s{n}", "url": f"https://shop.example/p/{n}", "notes": "x" * padding, "trace": f"event-ev-{n}"}
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name="fetch", actor_name="fetch", args=(job,), kwargs={}, options={}, message_id=f"event-ev-{n}"
    )
    return _Made(event=None, message=message, size=len(message.encode()))  # type: ignore[arg-type]


def test_checks_go_out_up_to_sixteen_to_a_message() -> None:
    grouped = list(groups([made(n) for n in range(40)], lambda m: m.size))
    assert [len(group) for group in grouped] == [MAX_CHECKS, MAX_CHECKS, 40 - 2 * MAX_CHECKS]
    assert [m.message.message_id for group in grouped for m in group] == [f"event-ev-{n}" for n in range(40)]


def test_a_batch_stays_under_the_payload_nats_takes() -> None:
    big = [made(n, padding=300_000) for n in range(7)]
    grouped = list(groups(big, lambda m: m.size))
    assert [len(group) for group in grouped] == [3, 3, 1]
    assert all(len(_fetch_batch(group).encode()) <= MAX_BYTES for group in grouped if len(group) > 1)


def test_a_batch_message_is_named_by_its_events_and_carries_their_jobs_whole() -> None:
    group = [made(n) for n in (7, 8, 9)]
    message = _fetch_batch(group)
    assert (message.queue_name, message.actor_name) == ("fetch", "fetch_batch")
    assert message.message_id == "event-ev-7-9-3"  # the same events, ingested again together: the same id
    [jobs] = message.args
    assert jobs == [m.message.args[0] for m in group]


def test_a_batch_runs_its_checks_at_once_and_says_how_each_ended() -> None:
    def work(n: int) -> None:
        time.sleep(0.2)
        if n == 3:
            raise ValueError("page 3 is broken")

    started = time.monotonic()
    errors = each(work, list(range(MAX_CHECKS)))
    assert time.monotonic() - started < 0.2 * MAX_CHECKS / 2  # at once, not one after another
    assert [type(e).__name__ if e else None for e in errors] == [None] * 3 + ["ValueError"] + [None] * (MAX_CHECKS - 4)


def test_a_check_still_running_at_the_deadline_is_given_up_on_alone() -> None:
    """A page that holds its thread (the parser stuck in C code, say) costs the batch only itself."""
    release = threading.Event()

    def work(n: int) -> None:
        if n == 1:
            release.wait(30)

    try:
        errors = each(work, [0, 1, 2], timeout=0.5)
    finally:
        release.set()
    assert errors[0] is None and errors[2] is None
    assert isinstance(errors[1], TimeoutError) and "still running after 0.5 s" in str(errors[1])
