"""HTTP fetching for the fetch stage: guarded, bounded, conditional.

Built on httpx with limits on everything read from outside: connect and
read time, total time, body size and redirects.  Every connection goes
through :class:`pipeline.netguard.AddressPolicy`, and redirects are followed
here, one hop at a time, so each hop is checked like the first.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import httpcore
import httpx

from pipeline import codings, deadline, metrics
from pipeline.failures import is_transient_status, parse_retry_after
from pipeline.netguard import AddressPolicy, BlockedAddressError
from pipeline.redact import redact_url

USER_AGENT = "nats-ai-pipeline/0.1 (+https://github.com/; monitoring)"


class FetchError(Exception):
    """The source could not be fetched.

    ``reason`` is safe to store and show; ``kind`` is its metric label; ``transient``
    says whether the same request may succeed later (``pipeline.failures``), and
    ``after`` how long the server asked us to wait (seconds; None: it did not say).
    """

    def __init__(self, reason: str, kind: str = "error", *, transient: bool = False, after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.kind = kind
        self.transient = transient
        self.after = after


class TooLargeError(FetchError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason, "too_large")


@dataclass(frozen=True)
class FetchResult:
    url: str  # after redirects
    status: int
    not_modified: bool
    body: bytes
    content_type: str  # the whole header, parameters (charset) included
    etag: str | None
    last_modified: str | None


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read, write and TLS handshake gets at most what is left of the deadline."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _clip(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _clip(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        tls = self._stream.start_tls(ssl_context, server_hostname, _clip(timeout, httpcore.ConnectTimeout))
        return _DeadlineStream(tls)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


def _clip(timeout: float | None, error: type[Exception]) -> float | None:
    try:
        return deadline.clip(timeout)
    except deadline.DeadlineExceededError as e:
        raise error(str(e)) from None


class _GuardedBackend(httpcore.SyncBackend):
    """Resolves names itself, connects only to addresses the policy allows, within the exchange's deadline."""

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        last_error: Exception | None = None
        for address in self.policy.resolve(host, port):
            try:
                stream = super().connect_tcp(
                    address, port, _clip(timeout, httpcore.ConnectTimeout), local_address, socket_options
                )
            except httpcore.ConnectError as e:
                last_error = e
            else:
                return _DeadlineStream(stream)
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
        self.policy = policy or AddressPolicy()
        self.client = httpx.Client(
            transport=_GuardedTransport(self.policy),
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": codings.ACCEPT},
            trust_env=False,
        )

    def close(self) -> None:
        self.client.close()

    def fetch(self, url: str, *, etag: str | None = None, last_modified: str | None = None) -> FetchResult:
        """GET ``url``; with ``etag``/``last_modified`` a 304 comes back as ``not_modified``.

        One deadline of ``timeout`` seconds covers the whole exchange, redirects included.
        Raises ``FetchError`` (``transient`` set for what a later try may fix).
        """
        started = time.monotonic()
        try:
            with deadline.deadline(self.timeout):
                result = self._fetch(url, etag, last_modified)
        except FetchError as e:
            metrics.FETCH_ERRORS.labels(e.kind).inc()
            raise
        finally:  # failures too: a timeout is the slowest fetch of all
            metrics.FETCH_SECONDS.observe(time.monotonic() - started)
        metrics.FETCH_BYTES.inc(len(result.body))
        return result

    def _fetch(self, url: str, etag: str | None, last_modified: str | None) -> FetchResult:
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
                    return self._read(response)
            except BlockedAddressError as e:
                raise FetchError(str(e), "blocked") from None
            except httpx.InvalidURL as e:
                raise FetchError(f"invalid URL: {e}", "bad_url") from None
            except UnicodeError as e:  # a host name IDNA cannot encode
                raise FetchError(f"invalid URL: {e}", "bad_url") from None
            except (httpx.TimeoutException, deadline.DeadlineExceededError):
                reason = f"timed out after {self.timeout:g}s fetching {redact_url(url)}"
                raise FetchError(reason, "timeout", transient=True) from None
            except OSError as e:  # name resolution and the like
                reason = f"{type(e).__name__} fetching {redact_url(url)}: {e}"
                raise FetchError(reason, "connection", transient=True) from None
            except httpx.HTTPError as e:
                reason = f"{type(e).__name__} fetching {redact_url(url)}"
                raise FetchError(reason, "connection", transient=True) from None
        raise FetchError(f"more than {self.max_redirects} redirects", "redirects")

    def _read(self, response: httpx.Response) -> FetchResult:
        status = response.status_code
        metrics.FETCH_RESPONSES.labels(_code_label(status)).inc()
        if status == 304:
            return self._result(response, b"")
        if status >= 400:
            reason = f"HTTP {status} from {response.url.host}"
            if not is_transient_status(status):
                raise FetchError(reason, "http_status")
            after = parse_retry_after(response.headers.get("retry-after"))
            kind = "retry_later" if status in (408, 429, 503) else "http_status"
            raise FetchError(reason + (f", retry after {after:g}s" if after else ""), kind, transient=True, after=after)
        coding = response.headers.get("content-encoding", "")
        unknown = codings.unknown(coding)
        if unknown:  # its bytes would be taken for the page
            reason = f"unsupported Content-Encoding {', '.join(unknown)!r} from {response.url.host}"
            raise FetchError(reason, "bad_content")
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            raise TooLargeError(f"body of {declared} bytes is over the {self.max_bytes} byte limit")
        try:
            body = codings.decode(self._raw(response), coding, self.max_bytes)
        except codings.BodyTooLargeError as e:
            raise TooLargeError(str(e)) from None
        except codings.CodingError as e:
            raise FetchError(
                f"cannot decode the body sent with Content-Encoding {coding!r}: {e}", "bad_content"
            ) from None
        return self._result(response, body)

    def _raw(self, response: httpx.Response) -> Iterator[bytes]:
        """The body as sent, at most ``max_bytes`` of it (compressed bodies are bounded twice)."""
        size = 0
        for chunk in response.iter_raw():
            size += len(chunk)
            if size > self.max_bytes:
                raise TooLargeError(f"body is over the {self.max_bytes} byte limit")
            yield chunk

    @staticmethod
    def _result(response: httpx.Response, body: bytes) -> FetchResult:
        return FetchResult(
            url=str(response.url),
            status=response.status_code,
            not_modified=response.status_code == 304,
            body=body,
            content_type=response.headers.get("content-type", ""),
            etag=response.headers.get("etag"),
            last_modified=response.headers.get("last-modified"),
        )


_KNOWN_CODES = {int(status) for status in HTTPStatus}


def _code_label(code: int) -> str:
    """The status code, or ``other`` for one no standard names: a site cannot invent label values."""
    return str(code) if code in _KNOWN_CODES else "other"
