"""Keep secrets out of logs, errors and output: URLs are cut to scheme and host.

One place decides what of a URL may be shown: log records, fetch and
delivery errors, stored alert targets, the CLI.  Dramatiq logs a failed
message with its arguments, and those hold URLs whose paths, queries or
user parts can be keys (a Slack webhook path, ``?api_key=``,
``mailtos://user:password@``); ``install()`` rewrites every log record of
the process before any handler sees it.  Known secrets (the OpenAI keys)
are registered with ``add_secret`` and blanked wherever they appear.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit, urlunsplit

_URL = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]{1,15})://([^\s'\"<>,)\]}]*)")
_formatter = logging.Formatter()
_secrets: set[str] = set()

#: Schemes whose host names a server; in the others (slack://T/B/X) the "host" is part of the secret.
_HOST_SCHEMES = {"http", "https", "nats", "tls", "ws", "wss"}


def redact_url(url: str) -> str:
    """``scheme://host[:port]/…``: no credentials, path or query, which may hold keys."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() not in _HOST_SCHEMES:
        return f"{scheme}://…"
    netloc = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0].rsplit("@", 1)[-1]
    return f"{scheme}://{netloc}/…"


def display_url(url: str) -> str:
    """A URL without credentials or query string, for listings where the path is wanted."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def add_secret(secret: str) -> None:
    """Never show ``secret`` (an API key) in anything :func:`redact_text` passes, logs included."""
    if len(secret) >= 8:  # shorter "secrets" would blank out ordinary words
        _secrets.add(secret)


def redact_text(text: str) -> str:
    for secret in _secrets:
        text = text.replace(secret, "[secret]")
    return _URL.sub(lambda match: redact_url(match.group(0)), text)


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
