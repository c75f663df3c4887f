"""One rule for every outgoing call (fetch, webhook, notifier, LLM): retry it, or give up at once.

Transient: timeouts, connection errors, 5xx, 408 Request Timeout, 429 Too
Many Requests and 409 Conflict; they are retried with backoff, or after the
server's ``Retry-After`` when it sent one.  Permanent: every other 4xx,
refused addresses, bad URLs and content that cannot be read; retrying the
same request cannot help, so they are dead-lettered at once, with the reason.
(RFC 9110 §15.5 and §15.6; 408 and 429 say "try again" in their own words;
409 is what APIs answer on lock contention, and the OpenAI and Stripe SDKs
retry it, as we did for LLM calls before this rule was shared.)
"""

from __future__ import annotations

import email.utils
import math
import time
from dataclasses import dataclass
from datetime import UTC

#: A ``Retry-After`` beyond this is a server that is down: we come back then, and ask again.
MAX_RETRY_AFTER = 3600.0
#: ``Retry-After: 0`` means now; this floor keeps a busy server from being asked in a hot loop.
MIN_RETRY_AFTER = 0.5


def is_transient_status(status: int) -> bool:
    """Whether an HTTP status says that the same request may succeed later."""
    return status in (408, 409, 429) or 500 <= status <= 599


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (RFC 9110 §10.2.3), within [0.5 s, 1 h].

    Takes delay-seconds, fractions too (``2.5``; servers send them although the RFC
    says digits), ``0`` (now, at the floor), and HTTP dates (``now`` is the Unix time
    to count from).  None when the value is missing or unreadable (negative, not a
    number, not a date): the caller backs off as if no delay were given.
    """
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        number = float(value)
    except ValueError:
        seconds = _seconds_until(value, now)  # a date in the past is "now"
    else:
        seconds = number if math.isfinite(number) and number >= 0 else None
    if seconds is None:
        return None
    return min(max(seconds, MIN_RETRY_AFTER), MAX_RETRY_AFTER)


def _seconds_until(date: str, now: float | None) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(date)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # HTTP dates are GMT (RFC 9110 §5.6.7)
        when = when.replace(tzinfo=UTC)
    return when.timestamp() - (time.time() if now is None else now)


@dataclass(frozen=True)
class Delivered:
    """How one delivery attempt went: ``status`` is the receiver's last HTTP status when there was one;
    a failure is ``transient`` or not, and ``after`` is the wait the receiver asked for (seconds)."""

    ok: bool
    status: int | None = None
    error: str = ""
    transient: bool = True
    after: float | None = None
