"""A local test site shared by the benchmarks: product pages whose prices move each round, and an inbox.

The same pages serve our pipeline and the peers it is compared with (``bench/peers``), so every
tool fetches the same bytes from the same server in the same run::

    with Pages(1000) as pages:
        check(pages.urls)      # every page carries a price
        pages.round += 1       # every page's price changes
        check(pages.urls)

``/p/{n}`` (n = 0..count-1) is about 6 KB of ordinary HTML (head, nav, paragraphs, a list, a footer)
with the price in ``{price_html}``; the price depends on ``n`` and
``round`` only: 100 EUR or more in round 0, below 100 after, and different for every page whenever
``round`` changes (so a rule ``price < 100`` fires on the first recheck, not on the first check).  ``delay``
makes every GET answer late (the "slow sites" bench: 1000 pages each answering after 1 s); a listen
backlog of 2048 holds 1000 clients connecting at once.  The site is aiohttp's server on a uvloop loop
of its own thread: 0.15 ms of CPU per page where the standard library's threaded server took 0.34 ms,
CPU that the systems measured on the same two cores would otherwise lose to the site.  ``scripted``
pages (the render bench) show ``loading...`` where the price goes, and a script fills it in 100 ms after
load, as shops that render on the client do; their stylesheet and script are served from ``/static/``
(about 4 and 20 KB).  POST ``/inbox`` answers 204 and counts.  No ETag or Last-Modified: a conditional
GET cannot shortcut a check.
"""

from __future__ import annotations

import asyncio
import threading
from types import TracebackType

import uvloop
from aiohttp import web

_FILLER = (
    "Built for everyday use, this model pairs a sturdy frame with parts that are easy to replace. "
    "Every unit is checked by hand before it leaves the workshop, and the finish is made to last "
    "through years of wear without fading or chipping. Owners tell us it is the piece they reach "
    "for first, whether at home, at work or on the road, and that it still looks new after a season."
)

_REVIEW = (
    "Arrived a day early and well packed. It feels solid in the hand and does exactly what the description "
    "says; I have used it most days since and would buy it again. Only wish it came in more colours."
)

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{name} | Example Shop</title>
<meta name="description" content="{name}: specifications, reviews and today's price at Example Shop.">
<link rel="stylesheet" href="/static/shop.css">
<link rel="canonical" href="/p/{n}">
</head>
<body>
<header class="site-header">
<a class="logo" href="/">Example Shop</a>
<nav class="main-nav">
<ul>
<li><a href="/c/new">New in</a></li>
<li><a href="/c/kitchen">Kitchen</a></li>
<li><a href="/c/garden">Garden</a></li>
<li><a href="/c/tools">Tools</a></li>
<li><a href="/c/outdoor">Outdoor</a></li>
<li><a href="/c/office">Office</a></li>
<li><a href="/c/sale">Sale</a></li>
<li><a href="/account">My account</a></li>
<li><a href="/basket">Basket (0)</a></li>
</ul>
</nav>
<form class="search" action="/search"><input type="search" name="q" placeholder="Search the shop"></form>
</header>
<main>
<nav class="breadcrumbs"><a href="/">Home</a> &rsaquo; <a href="/c/tools">Tools</a> &rsaquo; {name}</nav>
<article class="product" id="product-{n}">
<h1 class="product-title">{name}</h1>
<p class="sku">Item number {sku}</p>
<div class="buy-box">
{price_html}
<p class="stock">In stock, ships within 2 working days</p>
<button class="add-to-basket" type="button">Add to basket</button>
</div>
<section class="description">
<h2>Description</h2>
<p>{filler}</p>
<p>{filler}</p>
<p>{filler}</p>
<p>{filler}</p>
<p>{filler}</p>
<p>{filler}</p>
</section>
<section class="specs">
<h2>Specifications</h2>
<ul>
<li>Weight: {weight} g</li>
<li>Dimensions: 30 x 20 x 12 cm</li>
<li>Material: powder-coated steel, beech handle</li>
<li>Colour: graphite grey</li>
<li>Warranty: 5 years</li>
<li>Made in the EU</li>
<li>Package contents: 1 unit, manual, spare fittings</li>
</ul>
</section>
<section class="reviews">
<h2>Reviews</h2>
<p>4.6 out of 5 stars from 128 reviews.</p>
<blockquote>{review}</blockquote>
<blockquote>{review}</blockquote>
<blockquote>{review}</blockquote>
</section>
<section class="delivery">
<h2>Delivery and returns</h2>
<p>Free delivery on orders over 40 EUR. Orders placed before 2 pm on a working day leave our warehouse
the same day. You can return any item within 30 days of delivery for a full refund; the return label
is in the parcel, and the refund reaches your account within five working days of our receiving it.</p>
</section>
<section class="related">
<h2>Customers also bought</h2>
<ul>
<li><a href="/p/{r1}">Workshop Tool {r1}</a></li>
<li><a href="/p/{r2}">Workshop Tool {r2}</a></li>
<li><a href="/p/{r3}">Workshop Tool {r3}</a></li>
<li><a href="/c/tools/spares">Spare fittings kit</a></li>
<li><a href="/c/tools/cases">Carry case, graphite grey</a></li>
<li><a href="/c/tools/care">Care and cleaning set</a></li>
</ul>
</section>
</article>
</main>
<footer class="site-footer">
<ul>
<li><a href="/help/delivery">Delivery</a></li>
<li><a href="/help/returns">Returns</a></li>
<li><a href="/help/contact">Contact us</a></li>
<li><a href="/legal/terms">Terms and conditions</a></li>
<li><a href="/legal/privacy">Privacy</a></li>
</ul>
<p>&copy; Example Shop. All prices include VAT.</p>
</footer>
{script}</body>
</html>
"""

# A client-rendered page's price: its script fills it in after load (and marks it, for ``wait_for``).
_SCRIPTED_PRICE = '<span class="price" data-price="{price}">loading...</span>'
_SCRIPT = """<script src="/static/shop.js"></script>
<script>window.addEventListener("load", () => setTimeout(() => {
  const p = document.querySelector(".price");
  p.textContent = "Price: " + p.dataset.price + " EUR"; p.classList.add("loaded");
}, 100));</script>
"""
# What a shop's bundle does besides: some code to parse and run, nothing fetched.
_STATIC = {
    "/static/shop.css": ("text/css", "".join(f".c{i} {{ margin: {i % 9}px; color: #{i:06x}; }}\n" for i in range(120))),
    "/static/shop.js": (
        "text/javascript",
        "".join(f"function f{i}(a) {{ return [a, {i}].map(x => x * 2).join('-'); }}\n" for i in range(400))
        + "window.shop = { ready: true };\n",
    ),
}


class Pages:
    """``count`` product pages on 127.0.0.1 (a free port), served from a background thread while in ``with``."""

    def __init__(self, count: int = 1000, *, delay: float = 0.0, scripted: bool = False) -> None:
        self.count = count
        self.delay = delay
        self.scripted = scripted
        self.round = 0  # the caller moves every price by changing this between rounds
        self._lock = threading.Lock()
        self._gets = 0
        self._posts = 0
        self._rendered: dict[tuple[int, int], bytes] = {}
        self._loop = uvloop.new_event_loop()
        self._runner = web.AppRunner(self._app(), access_log=None, handle_signals=False)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=2048)
        self._loop.run_until_complete(site.start())
        port = self._runner.addresses[0][1]
        self._thread: threading.Thread | None = None
        self.url = f"http://127.0.0.1:{port}"

    @property
    def urls(self) -> list[str]:
        return [f"{self.url}/p/{n}" for n in range(self.count)]

    @property
    def inbox(self) -> str:
        """Where webhooks go: POSTs here are counted (``posts``)."""
        return f"{self.url}/inbox"

    @property
    def gets(self) -> int:
        """Pages served (GETs answered 200)."""
        with self._lock:
            return self._gets

    @property
    def posts(self) -> int:
        """POSTs received at ``/inbox``."""
        with self._lock:
            return self._posts

    def price(self, n: int) -> int:
        """Page ``n``'s price this round: 100..139 in round 0, then 50..89; a new one every round (step 7 of 40)."""
        return (100 if self.round == 0 else 50) + (n + 7 * self.round) % 40

    def page(self, n: int) -> bytes:
        name = f"Workshop Tool {n}"
        price = self.price(n)
        price_html = (_SCRIPTED_PRICE if self.scripted else '<span class="price">Price: {price} EUR</span>').format(
            price=price
        )
        return _PAGE.format(
            n=n, name=name, sku=f"WT-{n:06d}", price_html=price_html, weight=400 + n % 600,
            filler=_FILLER, review=_REVIEW, r1=n + 1, r2=n + 2, r3=n + 3, script=_SCRIPT if self.scripted else "",
        ).encode()  # fmt: skip

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{path:.*}", self._get)
        app.router.add_post("/{path:.*}", self._post)
        return app

    async def _get(self, request: web.Request) -> web.Response:
        path = request.path
        if path in _STATIC:
            content_type, text = _STATIC[path]
            return web.Response(body=text.encode(), headers={"Content-Type": content_type})
        n = path[3:] if path.startswith("/p/") else ""
        if not (n.isdigit() and int(n) < self.count):
            return web.Response(status=404)
        if self.delay:
            await asyncio.sleep(self.delay)
        key = (int(n), self.round)
        body = self._rendered.get(key)
        if body is None:  # each page once per round: the site's own CPU is not what is measured
            body = self._rendered[key] = self.page(key[0])
        with self._lock:
            self._gets += 1
        return web.Response(body=body, headers={"Content-Type": "text/html; charset=utf-8"})

    async def _post(self, request: web.Request) -> web.Response:
        await request.read()
        if request.path != "/inbox":
            return web.Response(status=404)
        with self._lock:
            self._posts += 1
        return web.Response(status=204)

    def __enter__(self) -> Pages:
        self._thread = threading.Thread(target=self._loop.run_forever, name="bench-pages", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join()
        self._loop.close()
