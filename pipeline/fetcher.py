"""HTTP for the fetch and alert stages: guarded, bounded, conditional, and many exchanges at once.

Built on aiohttp's client, with limits on everything read from outside:
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
the loop only moves them.  aiohttp rather than httpx: with 128 requests in
flight, httpx's pool spent 6.9 ms of CPU per request (it scans every
connection for each request), aiohttp 0.36 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import TypeVar

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.helpers import is_ip_address
from dramatiq.asyncio import EventLoopThread
from yarl import URL

from pipeline import codings, metrics
from pipeline.broker.loop import new_event_loop
from pipeline.failures import is_transient_status, parse_retry_after
from pipeline.netguard import AddressPolicy, BlockedAddressError
from pipeline.redact import redact_url

USER_AGENT = "nats-ai-pipeline/0.1 (website monitoring)"
#: Connections one process keeps open at most (its threads bound the requests in flight first).
MAX_CONNECTIONS = 1000

#: Answers that send the client elsewhere (RFC 9110 §15.4), followed hop by hop here.
_REDIRECTS = frozenset({301, 302, 303, 307, 308})

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
    received_at: float = 0.0  # when its last byte arrived, seconds since the epoch: how recent the page is


@dataclass(frozen=True)
class Conditional:
    """A GET to make: the URL, and the validators of what was fetched last (a 304 if it is the same)."""

    url: str
    etag: str | None = None
    last_modified: str | None = None


@dataclass(frozen=True)
class _Received:
    """A final response as it came off the wire: headers and the raw (still encoded) body."""

    url: str
    status: int
    headers: Mapping[str, str]
    raw: list[bytes]
    at: float  # time.time() when its last byte arrived


@dataclass(frozen=True)
class Posted:
    """What a POST's answer said: its status and headers (its body is not read)."""

    status: int
    headers: Mapping[str, str]


class _GuardedResolver(AbstractResolver):
    """Resolves names itself and gives aiohttp only the addresses the policy allows.

    aiohttp connects to a literal IP address without asking a resolver, so
    :meth:`Fetcher._check_literal` checks those, on every hop.
    """

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = await asyncio.to_thread(self.policy.resolve, host, port)  # getaddrinfo blocks: off the loop
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in addresses
        ]

    async def close(self) -> None:
        pass


class Fetcher:
    """GETs pages and POSTs webhooks for one process; thread-safe.

    ``timeout`` (seconds) is one deadline for a whole exchange, connect, TLS,
    headers, body and every redirect hop, so a server that trickles a byte at a
    time cannot hold a thread longer.  ``max_bytes`` bounds a body before and
    after decoding.  No cookies are kept: one site's never reach another's check.
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
        self._session: aiohttp.ClientSession | None = None  # made on the loop, as aiohttp requires
        self._loop: EventLoopThread | None = None
        self._lock = threading.Lock()

    def fetch(self, url: str, *, etag: str | None = None, last_modified: str | None = None) -> FetchResult:
        """GET ``url``; with ``etag``/``last_modified`` a 304 comes back as ``not_modified``.

        Raises ``FetchError`` (``transient`` set for what a later try may fix).  The body is
        decoded here, in the calling thread: the loop only moves bytes.
        """
        [outcome] = self.fetch_all([Conditional(url, etag, last_modified)])
        if isinstance(outcome, FetchError):
            raise outcome
        return outcome

    def fetch_all(self, requests: Sequence[Conditional]) -> list[FetchResult | FetchError]:
        """GET every URL at once on the loop; for each request, in order, its result or why it failed.

        One hand-over to the loop and back for all of them: a fetch message carrying many
        checks (``pipeline.stages.fetch_batch``) waits once, not once per page.  Each request
        has its own deadline and its own outcome: one failing page fails only itself.
        """
        outcomes = self.run(lambda session: asyncio.gather(*(self._timed_get(session, r) for r in requests)))
        results: list[FetchResult | FetchError] = []
        for outcome in outcomes:
            try:
                if isinstance(outcome, FetchError):
                    raise outcome
                result = self._result(outcome)
                metrics.FETCH_BYTES.inc(len(result.body))
                results.append(result)
            except FetchError as e:
                metrics.FETCH_ERRORS.labels(e.kind).inc()
                results.append(e)
        return results

    async def get(self, url: str) -> FetchResult:
        """:meth:`fetch` as a coroutine, for work already on this fetcher's loop (:meth:`run`): the renderer's."""
        outcome = await self._with_session(lambda session: self._timed_get(session, Conditional(url)))
        if isinstance(outcome, FetchError):
            metrics.FETCH_ERRORS.labels(outcome.kind).inc()
            raise outcome
        result = self._result(outcome)
        metrics.FETCH_BYTES.inc(len(result.body))
        return result

    async def _timed_get(self, session: aiohttp.ClientSession, request: Conditional) -> _Received | FetchError:
        """One GET, its time measured (a failure too: a timeout is the slowest fetch of all); its failure returned."""
        started = time.monotonic()
        try:
            return await self._get(session, request.url, request.etag, request.last_modified)
        except FetchError as e:
            return e
        finally:
            metrics.FETCH_SECONDS.observe(time.monotonic() - started)

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> Posted:
        """POST ``body`` to ``url`` under the same deadline, no redirects followed, the answer's body not read.

        Raises ``BlockedAddressError``, ``aiohttp.InvalidURL``, ``aiohttp.ClientError``, ``OSError``
        and ``TimeoutError`` (the deadline passed).
        """
        return self.run(lambda session: self._post(session, url, body, headers))

    def close(self) -> None:
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is not None:
            # A request still running (Ctrl-C during `pipeline check`) ends now, cancelled, rather than be
            # destroyed pending with the loop ("Task was destroyed but it is pending!").
            loop.run_coroutine(_cancel_the_rest())
            if self._session is not None:
                loop.run_coroutine(self._session.close())
                self._session = None
            loop.stop()

    def run(self, exchange: Callable[[aiohttp.ClientSession], Awaitable[T]]) -> T:
        """Run ``exchange`` (given the HTTP session) on this fetcher's loop and wait for it from this thread.

        A Dramatiq time limit or shutdown cancels it."""
        with self._lock:
            if self._loop is None:
                self._loop = EventLoopThread(logger, interrupt_check_ival=0.5)
                self._loop.loop.close()
                self._loop.loop = new_event_loop()  # uvloop, as the broker's: aiohttp's parsing and I/O cost half
                self._loop.daemon = True
                self._loop.start(timeout=5.0)
            loop = self._loop
        return loop.run_coroutine(self._with_session(exchange))

    async def _with_session(self, exchange: Callable[[aiohttp.ClientSession], Awaitable[T]]) -> T:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    resolver=_GuardedResolver(self.policy), limit=MAX_CONNECTIONS, keepalive_timeout=5.0
                ),
                headers={"User-Agent": USER_AGENT, "Accept-Encoding": codings.ACCEPT},
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=min(self.timeout, 5.0)),
                auto_decompress=False,  # pipeline.codings decodes, strictly and within the size limit
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,  # no proxy from the environment: the policy sees every destination
            )
        return await exchange(self._session)

    def _check_literal(self, url: URL) -> None:
        """aiohttp connects to a literal address without resolving it: such a host is checked here."""
        if url.host and is_ip_address(url.host):
            self.policy.check_literal(url.host)

    async def _post(self, session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]) -> Posted:
        async with asyncio.timeout(self.timeout):
            target = URL(url)
            self._check_literal(target)
            async with _refusals(), session.post(target, data=body, headers=headers, allow_redirects=False) as response:
                return Posted(response.status, response.headers.copy())

    async def _get(
        self, session: aiohttp.ClientSession, url: str, etag: str | None, last_modified: str | None
    ) -> _Received:
        try:
            async with asyncio.timeout(self.timeout):
                return await self._follow(session, url, etag, last_modified)
        except TimeoutError:  # the deadline, or one of aiohttp's own timeouts within it
            reason = f"timed out after {self.timeout:g}s fetching {redact_url(url)}"
            raise FetchError(reason, "timeout", transient=True) from None

    async def _follow(
        self, session: aiohttp.ClientSession, url: str, etag: str | None, last_modified: str | None
    ) -> _Received:
        headers = {}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        for _ in range(self.max_redirects + 1):
            if not url.startswith(("http://", "https://")):
                raise FetchError(f"refusing to fetch {url.split(':', 1)[0]!r} URLs: only http and https", "bad_url")
            try:
                target = URL(url)
                self._check_literal(target)
                async with _refusals(), session.get(target, headers=headers, allow_redirects=False) as response:
                    if response.status in _REDIRECTS and "location" in response.headers:
                        url = str(response.url.join(URL(response.headers["location"])))
                        continue
                    return await self._receive(response)
            except BlockedAddressError as e:
                raise FetchError(str(e), "blocked") from None
            except (aiohttp.InvalidURL, ValueError) as e:  # UnicodeError too: a host name IDNA cannot encode
                raise FetchError(f"invalid URL: {e}", "bad_url") from None
            except aiohttp.ClientConnectorDNSError:
                reason = f"cannot resolve the host of {redact_url(url)}"
                raise FetchError(reason, "connection", transient=True) from None
            except aiohttp.ClientConnectorError as e:  # said plainly: aiohttp's own text names its SSL context
                reason = f"cannot connect to {redact_url(url)}: {e.os_error.strerror or e.os_error}"
                raise FetchError(reason, "connection", transient=True) from None
            except OSError as e:  # reset and the like
                reason = f"{type(e).__name__} fetching {redact_url(url)}: {e}"
                raise FetchError(reason, "connection", transient=True) from None
            except aiohttp.ClientError as e:
                reason = f"{type(e).__name__} fetching {redact_url(url)}"
                raise FetchError(reason, "connection", transient=True) from None
        raise FetchError(f"more than {self.max_redirects} redirects", "redirects")

    async def _receive(self, response: aiohttp.ClientResponse) -> _Received:
        """Check the status and headers, then read the raw body, at most ``max_bytes`` of it."""
        status = response.status
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
            async for chunk in response.content.iter_any():
                size += len(chunk)
                if size > self.max_bytes:  # compressed bodies are bounded twice: here and as they are decoded
                    raise TooLargeError(f"body is over the {self.max_bytes} byte limit")
                raw.append(chunk)
        return _Received(str(response.url), status, response.headers.copy(), raw, time.time())

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
            received_at=received.at,
        )


async def _cancel_the_rest() -> None:
    """Cancel every other task on this loop and wait for them to unwind."""
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def _refusals() -> AsyncIterator[None]:
    """The policy's refusal as itself: aiohttp wraps what its resolver raises in a connection error."""
    try:
        yield
    except aiohttp.ClientConnectorError as e:
        if isinstance(e.os_error, BlockedAddressError):
            raise e.os_error from None
        raise


_KNOWN_CODES = {int(status) for status in HTTPStatus}


def _code_label(code: int) -> str:
    """The status code, or ``other`` for one no standard names: a site cannot invent label values."""
    return str(code) if code in _KNOWN_CODES else "other"
