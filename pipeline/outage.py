"""Saying, once, that NATS is away and, once, that it is back: for every loop of a long-running process.

A server restart or a stream's leader election makes NATS calls fail for a
few seconds.  The loops of ``pipeline up``, ``autoscale``, ``scheduler`` and
``exporter`` carry on through it; each reports the outage with one
``Outage``: a warning when it starts ("NATS unreachable since 12:00:03,
retrying"), an info line when it ends, and nothing in between, so an outage
of an hour is two log lines, not thousands of tracebacks.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime

from pipeline.redact import redact_text

logger = logging.getLogger(__name__)


class Outage:
    """The state of one loop's link to NATS.  Thread-safe; ``since`` is None while all is well."""

    def __init__(self, what: str, log: logging.Logger = logger) -> None:
        self.what = what
        self.log = log
        self.since: datetime | None = None
        self._started = 0.0
        self._lock = threading.Lock()

    def failed(self, error: BaseException) -> None:
        """A call failed: the first failure of an outage is logged with its reason, later ones are not."""
        with self._lock:
            if self.since is not None:
                return
            since = self.since = datetime.now().astimezone()
            self._started = time.monotonic()
        reason = redact_text(f"{type(error).__name__}: {error}")
        self.log.warning("%s: NATS unreachable since %s, retrying (%s)", self.what, f"{since:%H:%M:%S}", reason)

    def ok(self) -> None:
        """A call worked: an outage, if there was one, is over."""
        with self._lock:
            if self.since is None:
                return
            since, lasted = self.since, time.monotonic() - self._started
            self.since = None
        self.log.info(
            "%s: NATS is back (unreachable from %s for %.0f s)", self.what, since.strftime("%H:%M:%S"), lasted
        )

    def describe(self) -> str | None:
        """``NATS unreachable since 12:00:03, retrying`` during an outage, else None."""
        since = self.since
        return None if since is None else f"NATS unreachable since {since.strftime('%H:%M:%S')}, retrying"
