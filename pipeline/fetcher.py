"""HTTP fetching for the fetch stage: guarded, bounded, conditional.

Built on httpx with limits on everything read from outside: connect and
read time, total time, body size and redirects.  Every connection goes
through :class:`pipeline.netguard.AddressPolicy`, and redirects are followed
here, one hop at a time, so each hop is checked like the first.
"""

from __future__ import annotations

import email.utils
import importlib.util
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus

import httpcore
import httpx

from pipeline import metrics
from pipeline.netguard import AddressPolicy, BlockedAddressError
from pipeline.redact import redact_url

USER_AGENT = "nats-ai-pipeline/0.1 (+https://github.com/; monitoring)"


def _decodable_codings() -> tuple[str, ...]:
    """The content codings httpx can decode here: br needs brotli, zstd needs zstandard (httpx's extras)."""
    optional = {"br": ("brotli", "brotlicffi"), "zstd": ("zstandard",)}
    found = [coding for coding, modules in optional.items() if any(importlib.util.find_spec(m) for m in modules)]
    return ("gzip", "deflate", *found)


CODINGS = _decodable_codings()
ACCEPT_ENCODING = ", ".join(CODINGS)


class FetchError(Exception):
    """The source could not be fetched; ``reason`` is safe to store and show, ``kind`` is its metric label."""

    def __init__(self, reason: str, kind: str = "error") -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


class TooLargeError(FetchError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason, "too_large")


class RetryLaterError(FetchError):
    """The server asked us to come back later (429/503 with ``Retry-After``)."""

    def __init__(self, reason: str, after: float) -> None:
        super().__init__(reason, "retry_later")
        self.after = after


@dataclass(frozen=True)
class FetchResult:
    url: str  # after redirects
    status: int
    not_modified: bool
    body: bytes
    content_type: str  # the whole header, parameters (charset) included
    etag: str | None
    last_modified: str | None
    elapsed: float


class _GuardedBackend(httpcore.SyncBackend):
    """Resolves names itself and connects only to addresses the policy allows."""

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):  # type: ignore[no-untyped-def]
        last_error: Exception | None = None
        for address in self.policy.resolve(host, port):
            try:
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as e:
                last_error = e
        raise last_error or httpcore.ConnectError(f"no address for {host}")


class _GuardedTransport(httpx.HTTPTransport):
    def __init__(self, policy: AddressPolicy) -> None:
        super().__init__(trust_env=False, retries=0)
        # httpx takes no network backend, so its pool is rebuilt with ours;
        # TLS still verifies the original host name (SNI and certificate).
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=100,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            network_backend=_GuardedBackend(policy),
        )


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (now if now is not None else datetime.now(UTC).timestamp()))


class Fetcher:
    def __init__(
        self,
        policy: AddressPolicy | None = None,
        *,
        max_bytes: int = 10 * 1024 * 1024,
        timeout: float = 15.0,
        max_redirects: int = 5,
    ) -> None:
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.max_redirects = max_redirects
        self.policy = policy or AddressPolicy.from_env()
        self.client = httpx.Client(
            transport=_GuardedTransport(self.policy),
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": ACCEPT_ENCODING},
            trust_env=False,
        )

    def close(self) -> None:
        self.client.close()

    def fetch(self, url: str, *, etag: str | None = None, last_modified: str | None = None) -> FetchResult:
        """GET ``url``; with ``etag``/``last_modified`` a 304 comes back as ``not_modified``."""
        started = time.monotonic()
        try:
            result = self._fetch(url, etag, last_modified)
        except FetchError as e:
            metrics.FETCH_ERRORS.labels(e.kind).inc()
            raise
        finally:  # failures too: a timeout is the slowest fetch of all
            metrics.FETCH_SECONDS.observe(time.monotonic() - started)
        metrics.FETCH_BYTES.inc(len(result.body))
        return result

    def _fetch(self, url: str, etag: str | None, last_modified: str | None) -> FetchResult:
        started = time.monotonic()
        headers = {}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        for _ in range(self.max_redirects + 1):
            if not url.startswith(("http://", "https://")):
                raise FetchError(f"refusing to fetch {url.split(':', 1)[0]!r} URLs: only http and https", "bad_url")
            try:
                with self.client.stream("GET", url, headers=headers) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = str(response.url.join(response.headers["location"]))
                        continue
                    return self._read(response, started)
            except BlockedAddressError as e:
                raise FetchError(str(e), "blocked") from None
            except httpx.InvalidURL as e:
                raise FetchError(f"invalid URL: {e}", "bad_url") from None
            except (OSError, UnicodeError) as e:  # name resolution and the like
                raise FetchError(f"{type(e).__name__} fetching {redact_url(url)}: {e}", "connection") from None
            except httpx.TimeoutException:
                raise FetchError(f"timed out after {self.timeout:g}s fetching {redact_url(url)}", "timeout") from None
            except httpx.HTTPError as e:
                raise FetchError(f"{type(e).__name__} fetching {redact_url(url)}", "connection") from None
            if time.monotonic() - started > self.timeout:
                raise FetchError(f"timed out after {self.timeout:g}s fetching {redact_url(url)}", "timeout")
        raise FetchError(f"more than {self.max_redirects} redirects", "redirects")

    def _read(self, response: httpx.Response, started: float) -> FetchResult:
        metrics.FETCH_RESPONSES.labels(_code_label(response.status_code)).inc()
        if response.status_code in (429, 503):
            after = parse_retry_after(response.headers.get("retry-after"))
            raise RetryLaterError(f"HTTP {response.status_code} from {response.url.host}", after or 60.0)
        if response.status_code == 304:
            return self._result(response, b"", started)
        if response.status_code >= 400:
            raise FetchError(f"HTTP {response.status_code} from {response.url.host}", "http_status")
        unknown = _unknown_codings(response.headers.get("content-encoding", ""))
        if unknown:  # httpx would hand the compressed bytes on as if they were the page
            raise FetchError(
                f"unsupported Content-Encoding {', '.join(unknown)!r} from {response.url.host}", "bad_content"
            )
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            raise TooLargeError(f"body of {declared} bytes is over the {self.max_bytes} byte limit")
        chunks, size = [], 0
        try:
            for chunk in response.iter_bytes():  # decoded: the size limit also bounds a decompression bomb
                size += len(chunk)
                if size > self.max_bytes:
                    raise TooLargeError(f"body is over the {self.max_bytes} byte limit")
                if time.monotonic() - started > self.timeout:
                    raise FetchError(f"timed out after {self.timeout:g}s reading the body", "timeout")
                chunks.append(chunk)
        except httpx.DecodingError:
            coding = response.headers.get("content-encoding", "")
            raise FetchError(f"cannot decode the body sent with Content-Encoding {coding!r}", "bad_content") from None
        return self._result(response, b"".join(chunks), started)

    @staticmethod
    def _result(response: httpx.Response, body: bytes, started: float) -> FetchResult:
        return FetchResult(
            url=str(response.url),
            status=response.status_code,
            not_modified=response.status_code == 304,
            body=body,
            content_type=response.headers.get("content-type", ""),
            etag=response.headers.get("etag"),
            last_modified=response.headers.get("last-modified"),
            elapsed=time.monotonic() - started,
        )


_KNOWN_CODES = {int(status) for status in HTTPStatus}


def _unknown_codings(header: str) -> list[str]:
    """The codings in a ``Content-Encoding`` header that are not decoded here (RFC 9110 §8.4)."""
    codings = [coding.strip().lower() for coding in header.split(",") if coding.strip()]
    return [coding for coding in codings if coding not in (*CODINGS, "identity", "x-gzip")]


def _code_label(code: int) -> str:
    """The status code, or ``other`` for one no standard names: a site cannot invent label values."""
    return str(code) if code in _KNOWN_CODES else "other"
