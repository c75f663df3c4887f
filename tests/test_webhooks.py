"""Webhook signatures, checked against the Standard Webhooks reference library."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook

from pipeline.webhooks import WebhookVerificationError, new_secret, signature, signed_headers, verify


def test_the_specification_example() -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    assert signature(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == (
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


def test_the_reference_library_accepts_our_signatures() -> None:
    secret = new_secret()
    body = json.dumps({"monitor": 7, "summary": "price is 95"}).encode()
    headers = signed_headers(secret, "alert-123", body)
    assert Webhook(secret).verify(body, headers) == {"monitor": 7, "summary": "price is 95"}


def test_we_accept_the_reference_librarys_signatures() -> None:
    secret = new_secret()
    now = datetime.now(UTC)
    offered = Webhook(secret).sign("id-9", now, "{}")
    verify(
        secret,
        {"webhook-id": "id-9", "webhook-timestamp": str(int(now.timestamp())), "webhook-signature": offered},
        b"{}",
    )


def test_tampering_and_replays_are_rejected() -> None:
    secret = new_secret()
    headers = signed_headers(secret, "id-1", b"body", timestamp=1_000_000)
    verify(secret, headers, b"body", now=1_000_010)
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        verify(secret, headers, b"b0dy", now=1_000_010)
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify(secret, headers, b"body", now=1_000_000 + 301)
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        verify(new_secret(), headers, b"body", now=1_000_010)
    with pytest.raises(WebhookVerificationError, match="malformed"):
        verify(secret, {"webhook-id": "x"}, b"body")
