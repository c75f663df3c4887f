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
