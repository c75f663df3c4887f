"""HTTP for the fetch and alert stages: guarded, bounded, conditional, and many exchanges at once.

Built on httpx's async client, with limits on everything read from outside:
connect time, one deadline for the whole exchange, body size and redirects.
Every connection goes through :class:`pipeline.netguard.AddressPolicy`, and
redirects are followed here, one hop at a time, so each hop is checked like
the first.

Worker threads call :meth:`Fetcher.fetch` and :meth:`Fetcher.post`, which
hand the exchange to one asyncio loop per process (Dramatiq's
``EventLoopThread``, the loop its ``AsyncIO`` middleware runs async actors
on) and wait for it.  Waiting on the network then costs a parked thread, not
a socket per thread: one fetch process holds hundreds of requests in flight
(its ``--threads``), and the bytes are decoded back in the calling thread so
the loop only moves them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import threading
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, TypeVar

import httpcore
import httpx
from dramatiq.asyncio import EventLoopThread

from pipeline import codings, metrics
from pipeline.failures import is_transient_status, parse_retry_after
from pipeline.netguard import AddressPolicy, BlockedAddressError
from pipeline.redact import redact_url

USER_AGENT = "nats-ai-pipeline/0.1 (+https://github.com/; monitoring)"
#: Connections one process keeps open at most (its threads bound the requests in flight first).
MAX_CONNECTIONS = 1000

T = TypeVar("T")
logger = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class _Received:
    """A final response as it came off the wire: headers and the raw (still encoded) body."""

    url: str
    status: int
    headers: httpx.Headers
    raw: list[bytes]


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves names itself and connects only to addresses the policy allows."""

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy
        self._backend = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        last_error: Exception | None = None
        for address in await self._resolve(host, port):
            try:
                return await self._backend.connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as e:
                last_error = e
        raise last_error or httpcore.ConnectError(f"no address for {host}")

    async def _resolve(self, host: str, port: int) -> list[str]:
        try:
            ipaddress.ip_address(host)
        except ValueError:  # a name: getaddrinfo blocks, so it runs in a thread, off the loop
            return await asyncio.to_thread(self.policy.resolve, host, port)
        return self.policy.resolve(host, port)  # a literal address needs no lookup

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


class Fetcher:
    """GETs pages and POSTs webhooks for one process; thread-safe.

    ``timeout`` (seconds) is one deadline for a whole exchange, connect, TLS,
    headers, body and every redirect hop, so a server that trickles a byte at a
    time cannot hold a thread longer.  ``max_bytes`` bounds a body before and
    after decoding.
    """

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
        pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),  # TLS still verifies the host name asked for (SNI, certificate)
            max_connections=MAX_CONNECTIONS,
            max_keepalive_connections=100,
            keepalive_expiry=5.0,
            network_backend=_GuardedBackend(self.policy),
        )
        transport = httpx.AsyncHTTPTransport(trust_env=False, retries=0)
        transport._pool = pool  # httpx takes no network backend, so its pool is replaced by one built with ours
        self.client = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": codings.ACCEPT},
            trust_env=False,
        )
        self._loop: EventLoopThread | None = None
        self._lock = threading.Lock()

    def _run(self, exchange: Awaitable[T]) -> T:
        """Run ``exchange`` on this fetcher's loop and wait for it (a Dramatiq time limit cancels it)."""
        with self._lock:
            if self._loop is None:
                self._loop = EventLoopThread(logger, interrupt_check_ival=0.5)
                self._loop.daemon = True
                self._loop.start(timeout=5.0)
            loop = self._loop
        return loop.run_coroutine(exchange)

    def close(self) -> None:
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is not None:
            loop.run_coroutine(self.client.aclose())
            loop.stop()

    def fetch(self, url: str, *, etag: str | None = None, last_modified: str | None = None) -> FetchResult:
        """GET ``url``; with ``etag``/``last_modified`` a 304 comes back as ``not_modified``.

        Raises ``FetchError`` (``transient`` set for what a later try may fix).
        """
        started = time.monotonic()
        try:
            received = self._run(self._get(url, etag, last_modified))
            result = self._result(received)
        except FetchError as e:
            metrics.FETCH_ERRORS.labels(e.kind).inc()
            raise
        finally:  # failures too: a timeout is the slowest fetch of all
            metrics.FETCH_SECONDS.observe(time.monotonic() - started)
        metrics.FETCH_BYTES.inc(len(result.body))
        return result

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        """POST ``body`` to ``url``, no redirects followed, the answer's body not read.

        Raises ``BlockedAddressError``, ``httpx.HTTPError`` and ``TimeoutError`` (the deadline passed).
        """
        return self._run(self._post(url, body, headers))

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        async with asyncio.timeout(self.timeout), self.client.stream("POST", url, content=body, headers=headers) as r:
            return r

    async def _get(self, url: str, etag: str | None, last_modified: str | None) -> _Received:
        try:
            async with asyncio.timeout(self.timeout):
                return await self._follow(url, etag, last_modified)
        except TimeoutError:  # the deadline, or one of httpx's own timeouts within it
            reason = f"timed out after {self.timeout:g}s fetching {redact_url(url)}"
            raise FetchError(reason, "timeout", transient=True) from None

    async def _follow(self, url: str, etag: str | None, last_modified: str | None) -> _Received:
        headers = {}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        for _ in range(self.max_redirects + 1):
            if not url.startswith(("http://", "https://")):
                raise FetchError(f"refusing to fetch {url.split(':', 1)[0]!r} URLs: only http and https", "bad_url")
            try:
                async with self.client.stream("GET", url, headers=headers) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = str(response.url.join(response.headers["location"]))
                        continue
                    return await self._receive(response)
            except BlockedAddressError as e:
                raise FetchError(str(e), "blocked") from None
            except httpx.InvalidURL as e:
                raise FetchError(f"invalid URL: {e}", "bad_url") from None
            except UnicodeError as e:  # a host name IDNA cannot encode
                raise FetchError(f"invalid URL: {e}", "bad_url") from None
            except httpx.TimeoutException:
                raise TimeoutError from None
            except OSError as e:  # name resolution and the like
                reason = f"{type(e).__name__} fetching {redact_url(url)}: {e}"
                raise FetchError(reason, "connection", transient=True) from None
            except httpx.HTTPError as e:
                reason = f"{type(e).__name__} fetching {redact_url(url)}"
                raise FetchError(reason, "connection", transient=True) from None
        raise FetchError(f"more than {self.max_redirects} redirects", "redirects")

    async def _receive(self, response: httpx.Response) -> _Received:
        """Check the status and headers, then read the raw body, at most ``max_bytes`` of it."""
        status = response.status_code
        metrics.FETCH_RESPONSES.labels(_code_label(status)).inc()
        if status >= 400:
            reason = f"HTTP {status} from {response.url.host}"
            if not is_transient_status(status):
                raise FetchError(reason, "http_status")
            after = parse_retry_after(response.headers.get("retry-after"))
            kind = "retry_later" if status in (408, 429, 503) else "http_status"
            raise FetchError(reason + (f", retry after {after:g}s" if after else ""), kind, transient=True, after=after)
        raw: list[bytes] = []
        if status != 304:
            coding = response.headers.get("content-encoding", "")
            unknown = codings.unknown(coding)
            if unknown:  # its bytes would be taken for the page
                reason = f"unsupported Content-Encoding {', '.join(unknown)!r} from {response.url.host}"
                raise FetchError(reason, "bad_content")
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > self.max_bytes:
                raise TooLargeError(f"body of {declared} bytes is over the {self.max_bytes} byte limit")
            size = 0
            async for chunk in response.aiter_raw():
                size += len(chunk)
                if size > self.max_bytes:  # compressed bodies are bounded twice: here and as they are decoded
                    raise TooLargeError(f"body is over the {self.max_bytes} byte limit")
                raw.append(chunk)
        return _Received(str(response.url), status, response.headers, raw)

    def _result(self, received: _Received) -> FetchResult:
        """Decode the body (here, in the calling thread: the loop only moves bytes)."""
        headers = received.headers
        coding = headers.get("content-encoding", "")
        try:
            body = codings.decode(received.raw, coding, self.max_bytes) if received.status != 304 else b""
        except codings.BodyTooLargeError as e:
            raise TooLargeError(str(e)) from None
        except codings.CodingError as e:
            reason = f"cannot decode the body sent with Content-Encoding {coding!r}: {e}"
            raise FetchError(reason, "bad_content") from None
        return FetchResult(
            url=received.url,
            status=received.status,
            not_modified=received.status == 304,
            body=body,
            content_type=headers.get("content-type", ""),
            etag=headers.get("etag"),
            last_modified=headers.get("last-modified"),
        )


_KNOWN_CODES = {int(status) for status in HTTPStatus}


def _code_label(code: int) -> str:
    """The status code, or ``other`` for one no standard names: a site cannot invent label values."""
    return str(code) if code in _KNOWN_CODES else "other"
