"""What travels between stages, and what is watched.

History (snapshots and the validators fetch sends) belongs to *what is
watched*, never to a bare URL: a monitor's own row (``monitor:<id>``; ids are
never reused), or for ad-hoc events the normalised URL together with the
selector and how the body is obtained.  Two watchers of one URL with
different selectors therefore never compare against each other's text.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urldefrag

from url_normalize import url_normalize

from pipeline.redact import display_url


def monitor_source(monitor_id: int) -> str:
    """The history key of a stored monitor: ``monitor:42``."""
    return f"monitor:{monitor_id}"


def watched_source(source: str, selector: str | None, how: str, key: bytes) -> str:
    """The history key of an ad-hoc check or pushed content.

    ``source`` is the URL (normalised by url-normalize as RFC 3986 §6 says: case,
    default port, dot segments, percent-escapes; and without its fragment, which
    is never sent to the server) or the producer's
    own name for pushed content; ``how`` says how the body is obtained
    (``fetch``, ``content``).  The result reads as the URL without credentials or
    query, followed by ``#`` and 16 hex digits of HMAC-SHA256 over all three
    under ``key`` (the deployment's webhook secret): it differs whenever any of
    the three does, and, keyed, it cannot be used to test guesses of a password
    or token in the URL.
    """
    is_url = source.startswith(("http://", "https://"))
    canonical = urldefrag(url_normalize(source) or source).url if is_url else source
    digest = hmac.new(key, "\n".join((how, canonical, selector or "")).encode(), hashlib.sha256).hexdigest()[:16]
    shown = display_url(canonical) if is_url else source
    return f"{shown[:1900]}#{digest}"
