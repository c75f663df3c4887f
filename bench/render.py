"""Pages per second, CPU per page and peak memory of the render stage, at 1, 4 and 8 pages per process.

One worker process's renderer (``pipeline/render.py``: Debian's Chromium, long-lived pages, every
request through the route handler and the address policy) renders N client-rendered product pages
(``bench/pages.py``, ``scripted``: the price is written by a script 100 ms after load, with a
stylesheet and a 25 KB script to load) until the price is there (``wait_for=".price.loaded"``), from
as many threads as it has pages, as a render worker's threads do.  Each setting starts its own
browser; its clock and CPU run from the first check, the browser's start included, to the last.

CPU is every process of this one (Python, Playwright's driver, Chromium and its renderers); memory is
the peak, sampled every 0.2 s, of the resident set of the same tree (shared pages counted in each
process, so an upper bound) and of Chromium's proportional set size, which the memory ceiling
(``PIPELINE_RENDER_MEMORY_LIMIT``) is compared with.  The render stage runs with its defaults: a
browser above the ceiling (1024 MiB) or after 500 checks is replaced, and the browsers column counts
the starts.

The reference line renders the same pages as a plain Playwright script would: a new browser context
per page, no route handler, no policy (``--no-reference`` skips it).  It shows what the long-lived
pages save and what keeping every request inside the policy costs.

    python bench/render.py                   # 200 pages at 1, 4 and 8 pages per process, and the reference
    python bench/render.py --pages 50 --concurrency 4
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pages import Pages
from process_tree import cpu_seconds, peak_rss_mb

from pipeline.fetcher import Fetcher
from pipeline.netguard import AddressPolicy
from pipeline.render import CHROMIUM_ARGS, Renderer, browser_memory, chromium_path


@dataclass
class Result:
    name: str
    concurrency: int
    pages: int
    seconds: float
    cpu: float
    rss_mb: float
    pss_mb: float
    failed: int
    browsers: int = 1  # started, the first included: more means the stage replaced its browser

    def row(self) -> str:
        per_second, cpu_ms = self.pages / self.seconds, self.cpu / self.pages * 1000
        return (
            f"| {self.name} | {self.concurrency} | {per_second:.1f} | {cpu_ms:.0f} "
            f"| {self.rss_mb:.0f} | {self.pss_mb:.0f} | {self.browsers} | {self.failed} |"
        )


class PeakMemory:
    """Samples the memory of this process's tree every 0.2 s while in ``with``."""

    def __init__(self) -> None:
        self.rss_mb = 0.0
        self.pss_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self.rss_mb = max(self.rss_mb, peak_rss_mb(os.getpid()))
            self.pss_mb = max(self.pss_mb, browser_memory() / 2**20)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def measure(name: str, concurrency: int, urls: list[str], render: Callable[[str], bytes]) -> Result:
    """Render every URL from ``concurrency`` threads; a page without its price counts as failed."""
    failed = 0

    def one(url: str) -> None:
        nonlocal failed
        try:
            html = render(url)
        except Exception as e:
            print(f"  {url}: {type(e).__name__}: {e}", file=sys.stderr)
            html = b""
        if b"loaded" not in html:
            failed += 1

    cpu = cpu_seconds(os.getpid())
    started = time.perf_counter()
    with PeakMemory() as memory, ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, urls))
        seconds = time.perf_counter() - started
        cpu = cpu_seconds(os.getpid()) - cpu  # before the browser closes: its processes are counted alive
    return Result(name, concurrency, len(urls), seconds, cpu, memory.rss_mb, memory.pss_mb, failed)


def pipeline_renderer(concurrency: int, urls: list[str]) -> Result:
    fetcher = Fetcher(AddressPolicy.from_entries(["127.0.0.1"]), timeout=10)
    renderer = Renderer(fetcher, pages=concurrency)  # the stage's defaults: its memory ceiling and recycling on
    try:
        result = measure(
            "render stage", concurrency, urls, lambda url: renderer.render(url, wait_for=".price.loaded").html
        )
        result.browsers = renderer.launches
        return result
    finally:
        renderer.close()
        fetcher.close()


def plain_playwright(concurrency: int, urls: list[str]) -> Result:
    """The reference: what a short Playwright script does, a new context per page, nothing routed."""
    from playwright.async_api import async_playwright

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coroutine):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result()

    playwright = run(async_playwright().start())
    browser = run(playwright.chromium.launch(executable_path=chromium_path(), args=list(CHROMIUM_ARGS)))

    async def render(url: str) -> bytes:
        context = await browser.new_context()
        try:
            page = await context.new_page()
            await page.goto(url, wait_until="load")
            await page.wait_for_selector(".price.loaded", state="attached")
            html = (await page.content()).encode()
            await page.screenshot(type="png")
            return html
        finally:
            await context.close()

    try:
        return measure("plain Playwright, a context per page", concurrency, urls, lambda url: run(render(url)))
    finally:
        run(browser.close())
        run(playwright.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=200, help="pages rendered per setting (default 200)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8], help="pages per process")
    parser.add_argument("--no-reference", action="store_true", help="skip the plain Playwright reference")
    args = parser.parse_args()
    if chromium_path() is None:
        sys.exit("no Chromium here: apt-get install chromium")

    print(f"{os.cpu_count()} cores; {args.pages} client-rendered pages per setting", file=sys.stderr)
    results = []
    with Pages(args.pages, scripted=True) as site:
        for concurrency in args.concurrency:
            results.append(pipeline_renderer(concurrency, site.urls))
            print(results[-1].row(), file=sys.stderr)
            if not args.no_reference:
                results.append(plain_playwright(concurrency, site.urls))
                print(results[-1].row(), file=sys.stderr)

    print("| renderer | pages at once | pages/s | CPU ms per page | peak RSS MB (tree) | peak Chromium PSS MB "
          "| browsers started | failed |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for result in results:
        print(result.row())


if __name__ == "__main__":
    main()
