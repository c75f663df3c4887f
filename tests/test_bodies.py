"""Claim checks: big bodies go to the Object Store, never into a message."""

from __future__ import annotations

import os

from pipeline.bodies import BodyStore
from pipeline.broker import JetStreamBroker


def test_a_5_mb_body_round_trips_by_key(broker: JetStreamBroker) -> None:
    store = BodyStore(broker)
    body = os.urandom(5 * 1024 * 1024)
    key = store.put(body)
    assert key.startswith("sha256:") and len(key) < 80  # what rides in the message
    assert store.get(key) == body
    assert store.put(body) == key  # stored once


def test_a_second_store_reads_what_the_first_wrote(broker: JetStreamBroker, make_broker) -> None:
    key = BodyStore(broker).put(b"<html>hello</html>")
    assert BodyStore(make_broker()).get(key) == b"<html>hello</html>"


def test_a_page_sized_body_rides_in_the_message_and_skips_the_store(broker: JetStreamBroker) -> None:
    from pipeline.bodies import INLINE_MAX

    store = BodyStore(broker)
    page = b"<html>" + b"x" * 6000 + b"</html>"
    reference = store.put(page)
    assert reference.startswith("base64:") and store.get(reference) == page
    assert store._store is None  # nothing was stored: no round trip to NATS, none to read it back
    assert store.put(b"y" * (INLINE_MAX + 1)).startswith("sha256:")  # above the limit: by claim check
