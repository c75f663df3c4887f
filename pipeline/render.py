"""Pages written by JavaScript: rendered in headless Chromium, every request under the address policy.

One Chromium per worker process (started on the first check, from Debian's
``chromium`` or ``PIPELINE_RENDER_CHROMIUM``, driven by the ``playwright`` package) with a few long-lived pages,
each reused across checks and cleared between them.  The browser is
recycled after ``recycle_after`` checks or when its processes use more than
``memory_limit`` bytes (Chromium's memory only grows), once the checks in
flight on it have finished; a browser that crashes or hangs is replaced and
the check raises a transient ``RenderError`` (Dramatiq retries it).

Safety, which routing alone does not give (redirect hops after the first
request, WebSockets and WebRTC got past Playwright's route handler to a
refused address when tried): the browser's only way out is a proxy that
does not exist (``DEAD_PROXY``), so a request reaches the network only when
the route handler fetches it itself, with the fetcher (the address policy,
redirects hop by hop, size and time limits); service workers are blocked,
WebSockets closed, non-proxied UDP (WebRTC) and DNS prefetching off.  Only
GET and HEAD are fetched: a page's POSTs are refused.  No secret enters the
browser: the URL it is given has no credentials (they are refused by the
renderer), and the webhook key lives elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psutil

from pipeline.fetcher import Fetcher, FetchError
from pipeline.metrics import BROWSER_LAUNCHES, BROWSER_MEMORY, RENDER_SECONDS

if TYPE_CHECKING:
    from playwright.async_api import Browser, CDPSession, Page, Playwright, Route, WebSocketRoute

    from pipeline.settings import RenderSettings

logger = logging.getLogger(__name__)

#: Where the browser's traffic would go if the route handler did not serve it: the discard port on
#: loopback, where nothing listens, so such a request fails instead of reaching anything.
DEAD_PROXY = "http://127.0.0.1:9"
#: Chromium's switches: nothing it does on its own (updates, sync, prefetching), no UDP outside the proxy.
CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",  # containers run it as root; the address policy, not the sandbox, keeps it in
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--no-first-run",
    "--dns-prefetch-disable",
    "--disable-features=NetworkPrediction,InterestFeedContentSuggestions,MediaRouter",
    "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
    "--webrtc-ip-handling-policy=disable_non_proxied_udp",
)


#: Seconds between readings of the browser's memory (each costs about 30 ms of CPU: /proc's smaps).
MEASURE_EVERY = 2.0
#: Checks a page serves before it is closed and a new one takes its place.  Chromium keeps a page's
#: renderer process across navigations, and that process grows by 2-3 MB with every page it shows
#: (measured here with plain Playwright too, with or without the back-forward cache); a new page
#: (its own context, so its own renderer) every 25 checks bounds it at about 120 MB, for the cost of
#: one new context (tens of ms) per 25 checks.
PAGE_CHECKS = 25


class RenderError(Exception):
    """The page could not be rendered; ``transient``: a later try may (a crashed browser, a timeout)."""

    def __init__(self, reason: str, *, transient: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient


@dataclass(frozen=True)
class Rendered:
    html: bytes  # the DOM after the wait, serialised, UTF-8
    screenshot: bytes  # PNG of the viewport
    status: int  # of the page's own document


def chromium_path() -> str | None:
    """Debian's ``chromium`` on the PATH (``PIPELINE_RENDER_CHROMIUM`` names another), else None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def browser_memory(root: int | None = None) -> int:
    """Bytes the Chromium processes under ``root`` (this process by default) use: the sum of their
    proportional set sizes (PSS), so the pages their renderers share are counted once, as a container's
    memory limit counts them; resident sizes where the kernel gives no PSS.  0 when none is running."""
    try:
        children = psutil.Process(root or os.getpid()).children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for child in children:
        try:
            if "chrom" not in child.name():  # Playwright's node driver is not the browser
                continue
            memory = child.memory_full_info()
            total += getattr(memory, "pss", memory.rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):  # exited meanwhile
            continue
    return total


class Renderer:
    """Renders pages for one worker process; thread-safe (every call runs on the fetcher's loop).

    ``pages``: checks rendered at once (long-lived pages); ``recycle_after``: checks after which the
    browser is replaced; ``memory_limit``: bytes of the browser's processes above which it is replaced
    (see :func:`browser_memory`); ``timeout``: seconds a check may take at most.
    """

    def __init__(
        self,
        fetcher: Fetcher,
        *,
        executable: str | None = None,
        pages: int = 4,
        recycle_after: int = 500,
        memory_limit: int = 1024 * 2**20,
        timeout: float = 30.0,
    ) -> None:
        self.fetcher = fetcher
        self.executable = executable or chromium_path()
        self.pages = pages
        self.recycle_after = recycle_after
        self.memory_limit = memory_limit
        self.timeout = timeout
        self.launches = 0  # browsers started, the first included: more than one means replacements
        self.memory = 0  # bytes the browser used after the last check
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None
        self._free: asyncio.Queue[Page] | None = None
        self._rendered = 0
        self._lock: asyncio.Lock | None = None
        self._refused: dict[int, FetchError] = {}  # by id(page): why its own document could not be fetched
        self._sessions: dict[int, CDPSession] = {}  # by id(page): its DevTools session, to clear storage
        self._checks: dict[int, int] = {}  # by id(page): checks it has served (see PAGE_CHECKS)
        self._measured = 0.0  # when the browser's memory was last read (monotonic seconds)

    @classmethod
    def configured(cls, fetcher: Fetcher, settings: RenderSettings) -> Renderer:
        """A renderer as the ``PIPELINE_RENDER_*`` settings describe it."""
        chromium = str(settings.chromium) if settings.chromium else None
        return cls(fetcher, executable=chromium, pages=settings.pages, recycle_after=settings.recycle_after,
                   memory_limit=settings.memory_limit * 2**20, timeout=settings.timeout)  # fmt: skip

    def render(self, url: str, *, wait_for: str | None = None) -> Rendered:
        """The page at ``url`` after its scripts ran: until ``wait_for`` (a CSS selector) is in the DOM, or
        the network has been idle for 500 ms.  Raises ``RenderError``; ``FetchError`` for the page itself."""
        return self.fetcher.run(lambda _: self._render(url, wait_for))

    def close(self) -> None:
        self.fetcher.run(lambda _: self._shut())

    async def _render(self, url: str, wait_for: str | None) -> Rendered:
        if not url.startswith(("http://", "https://")):
            raise FetchError(f"refusing to render {url.split(':', 1)[0]!r} URLs: only http and https", "bad_url")
        page = await self._page()
        reusable = False  # a page that failed is closed and replaced, not handed to the next check
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                rendered = await self._load(page, url, wait_for)
            RENDER_SECONDS.observe(time.perf_counter() - started)
            reusable = True
            return rendered
        except TimeoutError:
            self._raise_if_refused(page)  # it went somewhere refused, and what was waited for never came
            waited = f"{wait_for!r} did not appear" if wait_for else "the page did not finish loading and go quiet"
            raise RenderError(f"{waited} within {self.timeout:g}s", transient=True) from None
        except FetchError:  # the page itself could not be fetched: fetch's own reason and verdict
            reusable = True
            raise
        except RenderError:
            raise
        except Exception as e:  # the browser crashed or went away under us
            raise RenderError(f"the browser failed: {type(e).__name__}: {str(e)[:200]}", transient=True) from None
        finally:
            await (self._give_back(page) if reusable else self._discard(page))

    async def _load(self, page: Page, url: str, wait_for: str | None) -> Rendered:
        try:
            response = await page.goto(url, wait_until="load")
        except Exception:
            failure = self._refused.pop(id(page), None)
            if failure is not None:  # the route handler could not fetch the page itself: its reason, as fetch's
                raise failure from None
            raise
        if response is None:
            raise RenderError("the browser gave no response for the page", transient=True)
        if wait_for:
            try:
                await page.wait_for_selector(wait_for, state="attached")
            except Exception as e:
                if "SyntaxError" in str(e) or "is not a valid selector" in str(e):  # retrying cannot mend it
                    raise RenderError(
                        f"wait_for {wait_for!r} is not a selector Chromium accepts", transient=False
                    ) from None
                raise
        else:
            await page.wait_for_load_state("networkidle")
        self._raise_if_refused(page)  # a script or <meta refresh> sent it where the policy refuses
        if not page.url.startswith(("http://", "https://")):  # a script sent it to about:blank, say
            raise RenderError(f"the page navigated itself to {page.url[:60]!r}, away from the watched page",
                              transient=False)  # fmt: skip
        html = (await page.content()).encode()
        screenshot = await page.screenshot(type="png")
        return Rendered(html, screenshot, response.status)

    def _raise_if_refused(self, page: Page) -> None:
        """Raise the reason the page's own document was refused, if it was: Chromium would show its error
        page instead, and that page must never be read as the watched one."""
        failure = self._refused.pop(id(page), None)
        if failure is not None:
            raise failure

    async def _serve(self, route: Route) -> None:
        """Every request the page makes: fetched here under the policy, or refused."""
        request = route.request
        try:
            document = request.is_navigation_request() and request.frame == request.frame.page.main_frame
        except Exception:  # a popup's first request: its frame does not exist yet, and a popup is never watched
            await route.abort("blockedbyclient")
            return
        if request.method not in ("GET", "HEAD"):
            if document:  # a form the page submits: the document would become whatever the POST answers
                self._refused[id(request.frame.page)] = FetchError(
                    f"the page submits a form ({request.method}): only GET and HEAD are fetched", "blocked"
                )
            await route.abort("accessdenied")
            return
        try:
            result = await self.fetcher.get(request.url)
        except FetchError as e:
            if document:
                self._refused[id(request.frame.page)] = e
            await route.abort("blockedbyclient" if e.kind == "blocked" else "failed")
            return
        headers = {"content-type": result.content_type} if result.content_type else {}
        await route.fulfill(status=result.status, headers=headers, body=result.body)

    async def _page(self) -> Page:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # one check at a time decides on a new browser; the others wait for it
            reason = self._replace_because()
            if reason in ("recycled", "memory"):
                await self._drain()
            if reason is not None:
                await self._launch(reason)
            self._rendered += 1
        assert self._free is not None
        return await self._free.get()

    def _replace_because(self) -> str | None:
        """Why the browser must be (re)started before the next check, or None."""
        if self._browser is None:
            return "first" if self.launches == 0 else "crashed"
        if not self._browser.is_connected():
            return "crashed"
        if self._rendered >= self.recycle_after:
            return "recycled"
        if self.memory > self.memory_limit:
            return "memory"
        return None

    async def _drain(self) -> None:
        """Wait until the checks in flight have given their pages back, so a recycle cuts none short."""
        assert self._free is not None
        with contextlib.suppress(TimeoutError):  # a page lost with a crash never comes back: go on
            async with asyncio.timeout(self.timeout + 5):
                for _ in range(self.pages):
                    await self._free.get()

    async def _launch(self, reason: str) -> None:
        from playwright.async_api import async_playwright

        if reason == "memory":
            logger.info("the browser uses %d MiB, above the %d MiB ceiling: replacing it", self.memory >> 20,
                        self.memory_limit >> 20)  # fmt: skip
        await self._shut()
        if self.executable is None:
            raise RenderError(
                "no Chromium here: install Debian's chromium (apt-get install chromium) or set "
                "PIPELINE_RENDER_CHROMIUM",
                transient=True,
            )
        self._playwright = await async_playwright().start()
        try:
            self._browser = await self._playwright.chromium.launch(
                executable_path=self.executable, args=list(CHROMIUM_ARGS), proxy={"server": DEAD_PROXY}, headless=True
            )
        except Exception as e:  # not there, not executable, or dies at start: say which, in a line
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise RenderError(f"cannot start Chromium ({self.executable}): {first}", transient=True) from None
        self.launches += 1
        BROWSER_LAUNCHES.labels(reason).inc()
        self._rendered = 0
        self.memory = 0
        self._free = asyncio.Queue()
        for _ in range(self.pages):
            self._free.put_nowait(await self._new_page())

    async def _new_page(self) -> Page:
        assert self._browser is not None
        context = await self._browser.new_context(service_workers="block", accept_downloads=False)
        await context.route("**/*", self._serve)
        await context.route_web_socket("**/*", _refuse_websocket)
        page = await context.new_page()
        page.on("popup", _close)  # window.open, target=_blank: not the watched page, and memory
        self._sessions[id(page)] = await context.new_cdp_session(page)  # kept: a session per check costs more
        return page

    async def _give_back(self, page: Page) -> None:
        """Clear what the last site left (cookies, storage) and put the page back for the next check; after
        ``PAGE_CHECKS`` checks, a new page instead."""
        self._checks[id(page)] = self._checks.get(id(page), 0) + 1
        if self._checks[id(page)] >= PAGE_CHECKS:
            await self._discard(page)
            await self._measure()
            return
        try:
            await page.goto("about:blank")  # the last site's scripts and timers stop here
            await page.context.clear_cookies()
            await self._sessions[id(page)].send("Storage.clearDataForOrigin", {"origin": "*", "storageTypes": "all"})
            self._refused.pop(id(page), None)
        except Exception:  # a page that cannot be cleared is not reused
            await self._discard(page)
            return
        await self._measure()
        if self._free is not None:
            self._free.put_nowait(page)

    async def _measure(self) -> None:
        """Read the browser's memory, at most every ``MEASURE_EVERY`` seconds: a reading costs about 30 ms."""
        now = time.monotonic()
        if now - self._measured >= MEASURE_EVERY:
            self._measured = now
            self.memory = await asyncio.to_thread(browser_memory)  # reading /proc: off the loop
            BROWSER_MEMORY.set(self.memory)

    async def _discard(self, page: Page | None) -> None:
        """Close a page (worn, or it misbehaved) and put a fresh one in its place (a new browser if need be)."""
        if page is not None:
            self._sessions.pop(id(page), None)
            self._checks.pop(id(page), None)
            self._refused.pop(id(page), None)
            with contextlib.suppress(Exception):
                await page.context.close()
        if self._browser is not None and self._browser.is_connected() and self._free is not None:
            with contextlib.suppress(Exception):
                self._free.put_nowait(await self._new_page())
                return
        self._browser = None  # the next check launches a new one

    async def _shut(self) -> None:
        if self._browser is not None:
            with contextlib.suppress(Exception):
                await self._browser.close()
        if self._playwright is not None:
            with contextlib.suppress(Exception):
                await self._playwright.stop()
        self._browser = self._playwright = None
        self._sessions.clear()
        self._checks.clear()
        self._refused.clear()
        self._measured = 0.0
        BROWSER_MEMORY.set(0)


async def _close(popup: Page) -> None:
    with contextlib.suppress(Exception):
        await popup.close()


async def _refuse_websocket(socket: WebSocketRoute) -> None:
    await socket.close(code=1008, reason="WebSockets are refused by the address policy")
