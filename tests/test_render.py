"""The renderer on Debian's real Chromium: JavaScript-written pages, and nothing past the address policy.

Every kind of request a page can make is aimed at a receiver on 127.0.0.2, which the policy refuses
(only 127.0.0.1 is allowed here); the receiver listens on TCP and UDP and must see nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from prometheus_client import REGISTRY

from pipeline import render
from pipeline.content import extract
from pipeline.fetcher import Fetcher, FetchError
from pipeline.netguard import AddressPolicy
from pipeline.render import Renderer, RenderError, browser_memory, chromium_path
from pipeline.settings import RenderSettings
from tests.conftest import wait_for
from tests.site import Page, Site

pytestmark = pytest.mark.skipif(
    chromium_path() is None, reason="Debian's chromium is not installed here (apt-get install chromium)"
)

# The price appears 300 ms after load, as on shops that fill it in with JavaScript.
LATE_PRICE = b"""<html><body><h1>Lamp</h1><span class="price">loading...</span>
<script>setTimeout(() => { const p = document.querySelector('.price');
  p.textContent = 'Price: 42 EUR'; p.classList.add('loaded'); }, 300);</script></body></html>"""


class Receiver:
    """A TCP listener and a UDP socket on 127.0.0.2 that record whatever reaches them."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.tcp = socket.create_server(("127.0.0.2", 0))
        self.port = self.tcp.getsockname()[1]
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.2", 0))
        self.udp_port = self.udp.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()
        threading.Thread(target=self._receive, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.tcp.accept()
            except OSError:
                return
            self.seen.append("tcp " + connection.recv(200).decode(errors="replace").split("\r\n", 1)[0])
            connection.close()

    def _receive(self) -> None:
        while True:
            try:
                data, _ = self.udp.recvfrom(2048)
            except OSError:
                return
            self.seen.append(f"udp {len(data)} bytes")

    def close(self) -> None:
        self.tcp.close()
        self.udp.close()


def browsers_under(root: int) -> list[int]:
    """The Chromium browser processes (not their renderers and helpers) descended from ``root``."""
    parents: dict[int, int] = {}
    names: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                command = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
            names[int(entry.name)] = " ".join(c.decode(errors="replace") for c in command)

    def under(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == root:
                return True
        return False

    return [pid for pid, name in names.items() if "chromium" in name and "--type=" not in name and under(pid)]


@pytest.fixture
def site() -> Iterator[Site]:
    with Site() as site:
        yield site


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture
def renderer() -> Iterator[Renderer]:
    fetcher = Fetcher(AddressPolicy.from_entries(["127.0.0.1"]), timeout=5)
    renderer = Renderer.configured(fetcher, RenderSettings(pages=2, timeout=15))
    yield renderer
    renderer.close()
    fetcher.close()


def test_a_javascript_price_is_in_the_rendered_page_not_the_fetched_one(site: Site, renderer: Renderer) -> None:
    site.routes["/lamp"] = Page(LATE_PRICE, headers={"Content-Type": "text/html"})
    fetched = renderer.fetcher.fetch(site.url("/lamp"))  # what the HTTP fetch stage hands scrape
    assert extract(fetched.body, fetched.content_type, ".price").text == "loading..."
    rendered = renderer.render(site.url("/lamp"), wait_for=".price.loaded")
    assert extract(rendered.html, "text/html; charset=utf-8", ".price").text == "Price: 42 EUR"
    assert rendered.status == 200
    assert rendered.screenshot.startswith(b"\x89PNG\r\n\x1a\n")
    again = renderer.render(site.url("/lamp"))  # no selector: until the network is idle, on a reused page
    assert b"Price: 42 EUR" in again.html and renderer.launches == 1


def test_no_kind_of_request_gets_past_the_policy(site: Site, renderer: Renderer, receiver: Receiver) -> None:
    forbidden = f"http://127.0.0.2:{receiver.port}"
    site.routes["/hop"] = Page(b"", 302, {"Location": f"{forbidden}/redirect-hop"})
    site.routes["/sw.js"] = Page(
        b"self.addEventListener('fetch', () => {});", headers={"Content-Type": "text/javascript"}
    )
    page = f"""<html><head><link rel="dns-prefetch" href="//forbidden.invalid">
    <link rel="preconnect" href="{forbidden}"></head>
    <body><img src="{forbidden}/img"><iframe src="{forbidden}/frame"></iframe>
    <script src="{site.url("/hop")}"></script>
    <script>
      fetch("{forbidden}/fetch").catch(() => {{}});
      const x = new XMLHttpRequest(); x.open("GET", "{forbidden}/xhr"); x.send();
      navigator.sendBeacon && navigator.sendBeacon("{forbidden}/beacon", "b");
      try {{ new WebSocket("ws://127.0.0.2:{receiver.port}/ws"); }} catch (e) {{}}
      navigator.serviceWorker && navigator.serviceWorker.register("/sw.js").catch(() => {{}});
      try {{
        const pc = new RTCPeerConnection({{iceServers: [{{urls: "stun:127.0.0.2:{receiver.udp_port}"}}]}});
        pc.createDataChannel("d"); pc.createOffer().then(o => pc.setLocalDescription(o));
      }} catch (e) {{}}
      setTimeout(() => document.body.classList.add("done"), 1500);
    </script></body></html>""".encode()
    site.routes["/attack"] = Page(page, headers={"Content-Type": "text/html"})
    rendered = renderer.render(site.url("/attack"), wait_for="body.done")
    assert b"done" in rendered.html
    time.sleep(1.0)  # anything still on its way arrives
    assert receiver.seen == []
    assert {path for path, _ in site.requests} >= {"/attack", "/hop"}  # the allowed host was reached, through us


def test_a_page_that_redirects_to_a_refused_address_is_refused(
    site: Site, renderer: Renderer, receiver: Receiver
) -> None:
    site.routes["/jump"] = Page(b"", 302, {"Location": f"http://127.0.0.2:{receiver.port}/landing"})
    with pytest.raises(FetchError, match=r"non-public address 127\.0\.0\.2"):
        renderer.render(site.url("/jump"))
    assert receiver.seen == []


@pytest.mark.parametrize(
    "how",
    [
        "<script>location.href = '{target}';</script>",
        "<meta http-equiv='refresh' content='0; url={target}'>",
        "<script>setTimeout(() => {{ location.href = '{target}'; }}, 200);</script>",
        "<form method='post' action='{allowed}'></form><script>document.forms[0].submit();</script>",
    ],
    ids=["script", "meta-refresh", "script-after-load", "form-post"],
)
def test_a_page_that_sends_itself_somewhere_refused_fails_with_the_reason(
    site: Site, renderer: Renderer, receiver: Receiver, how: str
) -> None:
    """Chromium shows its own error page when a navigation is refused: that page must never be read as
    the watched one (it would be a change, and an alert)."""
    target = f"http://127.0.0.2:{receiver.port}/landing"
    body = f"<html><body><p class='price'>42</p>{how.format(target=target, allowed=site.url('/form'))}</body></html>"
    site.routes["/away"] = Page(body.encode(), headers={"Content-Type": "text/html"})
    with pytest.raises(FetchError, match=r"non-public address 127\.0\.0\.2|submits a form \(POST\)"):
        renderer.render(site.url("/away"))
    assert receiver.seen == []
    assert "/form" not in [path for path, _ in site.requests]


def test_a_page_that_leaves_for_about_blank_is_not_read_as_the_page(site: Site, renderer: Renderer) -> None:
    site.routes["/blank"] = Page(b"<p class='price'>42</p><script>location.href = 'about:blank';</script>",
                                 headers={"Content-Type": "text/html"})  # fmt: skip
    with pytest.raises(RenderError, match="navigated itself to 'about:blank'") as raised:
        renderer.render(site.url("/blank"))
    assert not raised.value.transient


def test_popups_are_closed_and_the_page_is_read(site: Site, renderer: Renderer, receiver: Receiver) -> None:
    site.routes["/ad"] = Page(b"<p>an advert</p>", headers={"Content-Type": "text/html"})
    opener = (f"<script>window.open('{site.url('/ad')}'); window.open('http://127.0.0.2:{receiver.port}/pop');"
              "</script><a id='a' target='_blank' href='/ad'>ad</a><script>document.getElementById('a').click();"
              "</script>")  # fmt: skip
    site.routes["/shop"] = Page((LATE_PRICE.decode() + opener).encode(), headers={"Content-Type": "text/html"})
    for _ in range(2):  # as often as a page's adverts open them, whatever the timing
        rendered = renderer.render(site.url("/shop"), wait_for=".price.loaded")
        assert b"42 EUR" in rendered.html
    assert receiver.seen == []
    assert renderer.launches == 1


def test_a_killed_browser_is_replaced(site: Site, renderer: Renderer) -> None:
    site.routes["/lamp"] = Page(LATE_PRICE, headers={"Content-Type": "text/html"})
    renderer.render(site.url("/lamp"), wait_for=".price.loaded")
    [pid] = browsers_under(os.getpid())
    os.kill(pid, signal.SIGKILL)
    for _ in range(3):  # the check that meets the dead browser fails transiently; a retry gets a new one
        try:
            rendered = renderer.render(site.url("/lamp"), wait_for=".price.loaded")
            break
        except Exception as e:
            assert getattr(e, "transient", False), e
    assert b"42 EUR" in rendered.html and renderer.launches == 2


def test_a_wait_for_chromium_refuses_is_a_permanent_error(site: Site, renderer: Renderer) -> None:
    site.routes["/lamp"] = Page(LATE_PRICE, headers={"Content-Type": "text/html"})
    with pytest.raises(RenderError, match="not a selector Chromium accepts") as raised:
        renderer.render(site.url("/lamp"), wait_for=".price:bogus")  # cssselect parses it; Chromium does not
    assert not raised.value.transient  # dead-lettered with the reason, not retried for hours


def launched(reason: str) -> float:
    return REGISTRY.get_sample_value("pipeline_render_browser_launches_total", {"reason": reason}) or 0.0


def test_a_browser_above_its_memory_ceiling_is_replaced(site: Site) -> None:
    site.routes["/lamp"] = Page(LATE_PRICE, headers={"Content-Type": "text/html"})
    fetcher = Fetcher(AddressPolicy.from_entries(["127.0.0.1"]), timeout=5)
    renderer = Renderer(fetcher, pages=1, memory_limit=100 * 2**20, timeout=15)
    try:
        before = launched("memory")
        renderer.render(site.url("/lamp"), wait_for=".price.loaded")
        assert renderer.memory > 20 * 2**20 and browser_memory() > 20 * 2**20  # measured: a real browser, tens of MB
        renderer.memory_limit = renderer.memory - 1  # the ceiling falls below what it uses now
        renderer.render(site.url("/lamp"), wait_for=".price.loaded")
        assert renderer.launches == 2 and launched("memory") == before + 1
        renderer.memory_limit = 2**40
        renderer.render(site.url("/lamp"), wait_for=".price.loaded")
        assert renderer.launches == 2  # under the ceiling, kept
    finally:
        renderer.close()
        fetcher.close()
    assert browser_memory() == 0  # closed: nothing of it is left running


def test_a_recycle_waits_for_the_checks_in_flight(site: Site) -> None:
    slow = LATE_PRICE.replace(b"300);", b"1500);")  # the price after 1.5 s: still rendering when the next one comes
    site.routes["/slow"] = Page(slow, headers={"Content-Type": "text/html"})
    fetcher = Fetcher(AddressPolicy.from_entries(["127.0.0.1"]), timeout=5)
    renderer = Renderer(fetcher, pages=2, recycle_after=1, timeout=15)
    results: list[bytes | Exception] = []

    def check() -> None:
        try:
            results.append(renderer.render(site.url("/slow"), wait_for=".price.loaded").html)
        except Exception as e:
            results.append(e)

    try:
        first = threading.Thread(target=check)
        first.start()
        assert wait_for(lambda: len(site.requests) >= 1, 10)  # the first is on its page
        check()  # the second needs a new browser (recycle_after=1) while the first still renders
        first.join(20)
        assert [b"42 EUR" in r if isinstance(r, bytes) else r for r in results] == [True, True]
        assert renderer.launches == 2
    finally:
        renderer.close()
        fetcher.close()


def renderers_under(pid: int) -> set[int]:
    """Chromium's renderer processes (one or more per page) under ``pid``."""
    found = set()
    for child in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "--type=renderer" in child.cmdline():
                found.add(child.pid)
    return found


def test_a_worn_page_is_replaced_and_its_renderer_process_ends(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(render, "PAGE_CHECKS", 3)  # each renderer process grows with every page it shows
    site.routes["/lamp"] = Page(LATE_PRICE, headers={"Content-Type": "text/html"})
    fetcher = Fetcher(AddressPolicy.from_entries(["127.0.0.1"]), timeout=5)
    renderer = Renderer(fetcher, pages=1, timeout=15)
    try:
        renderer.render(site.url("/lamp"), wait_for=".price.loaded")
        first = renderers_under(os.getpid())
        assert first
        for _ in range(2):  # the page's third check: then it is closed and a new one takes its place
            renderer.render(site.url("/lamp"), wait_for=".price.loaded")
        assert wait_for(lambda: not first & renderers_under(os.getpid()), 10), "the worn page's renderer lives on"
        rendered = renderer.render(site.url("/lamp"), wait_for=".price.loaded")
        assert b"42 EUR" in rendered.html and renderer.launches == 1  # a new page, not a new browser
    finally:
        renderer.close()
        fetcher.close()
