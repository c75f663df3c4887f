"""Keep secrets out of logs: every URL in a log record is cut to scheme and host.

Dramatiq logs a failed message with its arguments, and a job's arguments
hold URLs whose paths, queries or user parts can be keys (a Slack webhook
path, ``?api_key=``, ``mailtos://user:password@``).  Installed once per
process, this rewrites each record's message and traceback before any
handler sees it.
"""

from __future__ import annotations

import logging
import re

_URL = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]{1,15})://([^\s'\"<>,)\]}]*)")
_formatter = logging.Formatter()


def _cut(match: re.Match[str]) -> str:
    scheme, rest = match.group(1), match.group(2)
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1].split("?", 1)[0]
    if scheme.lower() not in ("http", "https", "nats", "tls", "ws", "wss"):
        host = "…"  # service URLs (slack://T/B/X) keep their secret in the "host"
    return f"{scheme}://{host}/…"


def redact_text(text: str) -> str:
    return _URL.sub(_cut, text)


def install() -> None:
    """Redact every log record made in this process from now on (idempotent)."""
    current = logging.getLogRecordFactory()
    if getattr(current, "redacting", False):
        return

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = current(*args, **kwargs)
        record.msg = redact_text(record.getMessage())
        record.args = None
        if record.exc_info:
            record.exc_text = redact_text(_formatter.formatException(record.exc_info))
        return record

    factory.redacting = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
