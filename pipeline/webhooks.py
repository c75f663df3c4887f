"""Signed webhooks, as the Standard Webhooks specification defines them.

Each delivery carries ``webhook-id`` (the same on every retry, so receivers
can drop duplicates), ``webhook-timestamp`` (Unix seconds) and
``webhook-signature``: ``v1,`` + base64 HMAC-SHA256 over
``"{id}.{timestamp}.{body}"`` with the endpoint's secret (``whsec_`` +
base64).  Receivers verify with any Standard Webhooks library.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from typing import TYPE_CHECKING

import aiohttp

from pipeline.failures import Delivered, is_transient_status, parse_retry_after
from pipeline.netguard import BlockedAddressError
from pipeline.redact import redact_url

if TYPE_CHECKING:
    from pipeline.fetcher import Fetcher

SECRET_PREFIX = "whsec_"

#: How far a timestamp may be from now when verifying, in seconds (the spec's 5 minutes).
TOLERANCE = 300


class WebhookVerificationError(ValueError):
    pass


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def _key(secret: str) -> bytes:
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        return base64.b64decode(encoded, validate=True)
    except ValueError:
        raise ValueError("a webhook secret is 'whsec_' followed by base64") from None


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secret: str, message_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, message_id, timestamp, body),
    }


def verify(secret: str, headers: dict[str, str], body: bytes, now: float | None = None) -> None:
    """Raise ``WebhookVerificationError`` unless ``headers`` sign ``body`` with ``secret``."""
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        message_id, stamp, offered = (lowered[h] for h in ("webhook-id", "webhook-timestamp", "webhook-signature"))
        timestamp = int(stamp)
    except (KeyError, ValueError):
        raise WebhookVerificationError("missing or malformed webhook headers") from None
    if abs((time.time() if now is None else now) - timestamp) > TOLERANCE:
        raise WebhookVerificationError("timestamp outside the tolerance")
    expected = signature(secret, message_id, timestamp, body)
    if not any(hmac.compare_digest(expected, candidate) for candidate in offered.split()):
        raise WebhookVerificationError("no matching signature")


def post(fetcher: Fetcher, url: str, body: bytes, headers: dict[str, str]) -> Delivered:
    """POST ``body`` under one deadline (``fetcher.timeout``), no redirects followed, nothing read back."""
    try:
        response = fetcher.post(url, body, headers)
        status, retry_after = response.status, response.headers.get("retry-after")
    except BlockedAddressError as e:  # names the host only
        return Delivered(False, None, str(e), transient=False)
    except (aiohttp.InvalidURL, ValueError) as e:
        return Delivered(False, None, f"invalid URL: {type(e).__name__}", transient=False)
    except Exception as e:  # timeouts and connection errors: the type says why; the message could hold secrets
        return Delivered(False, None, f"{type(e).__name__} posting to {redact_url(url)}", transient=True)
    if 200 <= status < 300:
        return Delivered(True, status)
    transient = is_transient_status(status)
    after = parse_retry_after(retry_after) if transient else None
    return Delivered(False, status, f"HTTP {status}", transient=transient, after=after)
