"""Logging for every ``pipeline`` process: a level from ``-v``/``-q``, plain lines or JSON lines.

Records are redacted before any handler sees them (``pipeline.redact``), so
neither format can carry a URL's secrets.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (RFC 3339, UTC), ``level``, ``logger``, ``message``, ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def configure(*, verbose: int = 0, quiet: bool = False, as_json: bool = False) -> None:
    """WARNING by default, INFO with ``verbose`` (long-running commands add one: their scaling decisions,
    outages and recoveries are INFO), DEBUG with two, WARNING whatever with ``quiet``.
    Replaces the root logger's handlers."""
    levels = [logging.WARNING, logging.INFO, logging.DEBUG]
    level = logging.WARNING if quiet else levels[min(verbose, 2)]
    handler = logging.StreamHandler()
    if as_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for chatty in ("httpx", "httpcore", "asyncio", "alembic", "pypdf"):
        logging.getLogger(chatty).setLevel(max(level, logging.WARNING))
    # Main-text extraction logs ERROR for every page too small to have a main text: not an error of ours.
    for noisy in ("trafilatura", "htmldate", "courlan", "justext"):
        logging.getLogger(noisy).setLevel(level if level == logging.DEBUG else logging.CRITICAL)
