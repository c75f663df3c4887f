"""What an OpenAI-compatible server says about its quota, from its response headers."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from pipeline.failures import MAX_RETRY_AFTER, parse_retry_after

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float | None:
    """``6m0s`` -> 360.0, ``20ms`` -> 0.02, ``1.5`` -> 1.5; None if it is neither."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


def _bounded(seconds: float | None) -> float | None:
    if seconds is None or not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def retry_after(headers: Mapping[str, str]) -> float | None:
    """``retry-after-ms``, else ``Retry-After`` in seconds or as an HTTP date; at most an hour."""
    if "retry-after-ms" in headers:
        try:
            return _bounded(float(headers["retry-after-ms"]) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = parse_retry_after(value)  # seconds, fractions, HTTP dates: the one parser of every client
    if seconds is None:  # some OpenAI-compatible servers write Go durations: "6m0s"
        seconds = _bounded(parse_duration(value))
    return seconds


@dataclass(frozen=True)
class QuotaHeaders:
    remaining: dict[str, float] = field(default_factory=dict)
    reset: dict[str, float] = field(default_factory=dict)
    retry_after: float | None = None

    @classmethod
    def parse(cls, headers: Mapping[str, str]) -> QuotaHeaders:
        remaining, reset = {}, {}
        for name in ("requests", "tokens"):
            left = headers.get(f"x-ratelimit-remaining-{name}", "")
            if left.strip().isdigit():
                remaining[name] = float(left)
            seconds = _bounded(parse_duration(headers.get(f"x-ratelimit-reset-{name}", "")))
            if seconds is not None:
                reset[name] = seconds
        return cls(remaining, reset, retry_after(headers))
