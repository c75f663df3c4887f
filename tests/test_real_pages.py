"""Pages as they really are, served byte for byte by a local HTTP server, checked by `pipeline check --json`.

Each case is a kind of fault users of website monitors report: a charset the
page declares, JSON served as text, a feed, a PDF, compressed bodies nobody
asked for, several numbers in one selection.  The command is the one users
run, with its exit codes: 0 matches, 3 no match, 1 unreadable, 2 bad input.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator

import brotli
import pytest
import zstandard
from typer.testing import CliRunner

from pipeline.cli import app
from tests.pdf import make_pdf
from tests.site import Page, Site

runner = CliRunner()


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    with Site() as site:
        yield site


@pytest.fixture(autouse=True)
def loopback_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_FETCH_ALLOW_HOSTS", "127.0.0.1")


def serve(site: Site, path: str, body: bytes, content_type: str | None, **headers: str) -> str:
    if content_type is not None:
        headers["Content-Type"] = content_type
    site.routes[path] = Page(body, headers={name.replace("_", "-"): value for name, value in headers.items()})
    return site.url(path)


def check(url: str, *args: str) -> tuple[int, dict]:
    """`pipeline check URL ARGS --json`: the exit code and the JSON (or {"error": ...} on stderr)."""
    result = runner.invoke(app, ["check", url, *args, "--json"])
    output = result.stdout.strip()
    if result.exit_code in (0, 3):
        return result.exit_code, json.loads(output)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, {"error": " ".join(result.stderr.split())}


# 1. Bytes to text


def test_an_http_charset_is_honoured(site: Site) -> None:
    body = '<p class="t">Schäferhund 12,50 €</p>'.encode("cp1252")
    code, out = check(serve(site, "/cp1252", body, "text/html; charset=windows-1252"), "--selector", ".t")
    assert code == 0 and out["text"] == "Schäferhund 12,50 €" and out["encoding"] == "cp1252"


def test_a_meta_charset_is_honoured_without_an_http_one(site: Site) -> None:
    body = '<meta charset="shift_jis"><p class="t">日本語 価格</p>'.encode("shift_jis")
    code, out = check(serve(site, "/sjis", body, "text/html"), "--selector", ".t")
    assert code == 0 and out["text"] == "日本語 価格"


def test_a_json_body_with_a_byte_order_mark(site: Site) -> None:
    url = serve(site, "/bom.json", b'\xef\xbb\xbf{"price": 89.5}', "application/json")
    code, out = check(url, "--selector", "$.price", "--rule", "price < 100")
    assert (code, out["text"], out["relevant"]) == (0, "89.5", True)


@pytest.mark.parametrize(
    ("content_type", "body", "text"),
    [
        # ISO-8859-1 is windows-1252 to browsers: 0x80 is the euro sign.
        ("text/html; charset=ISO-8859-1", "<p class='t'>Preis 5 €</p>".encode("cp1252"), "Preis 5 €"),
        # <meta http-equiv>, the older form of the declaration.
        ("text/html", b'<meta http-equiv="Content-Type" content="text/html; charset=iso-8859-2"><p class="t">'
         + "Zażółć gęślą".encode("iso-8859-2") + b"</p>", "Zażółć gęślą"),
        # The HTTP charset beats the page's own declaration.
        ("text/html; charset=utf-8", '<meta charset="iso-8859-1"><p class="t">Crème</p>'.encode(), "Crème"),
        # A byte-order mark beats both.
        ("text/html; charset=iso-8859-1", '\ufeff<p class="t">Ωmega</p>'.encode("utf-16-le"), "Ωmega"),
        # No declaration at all: detection.
        ("text/html", "<p class='t'>Всё хорошо, цена снижена до 120 рублей сегодня</p>".encode("cp1251"),
         "Всё хорошо, цена снижена до 120 рублей сегодня"),
        # A charset Python does not know is passed over, not a crash.
        ("text/html; charset=x-unknown-9", "<p class='t'>naïve</p>".encode(), "naïve"),
    ],
)  # fmt: skip
def test_more_charsets(site: Site, content_type: str, body: bytes, text: str) -> None:
    code, out = check(serve(site, "/charset", body, content_type), "--selector", ".t")
    assert code == 0 and out["text"] == text


def test_an_xml_declaration_names_a_feeds_encoding(site: Site) -> None:
    body = '<?xml version="1.0" encoding="windows-1251"?><rss version="2.0"><channel><title>Новости</title>' \
           "<item><title>Снижение цен</title><link>http://example.com/1</link></item></channel></rss>"  # fmt: skip
    code, out = check(serve(site, "/cyr.xml", body.encode("cp1251"), "application/rss+xml"), "--selector", "item title")
    assert code == 0 and out["text"] == "Снижение цен"


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize(
    ("coding", "compress"),
    [
        ("br", brotli.compress),
        ("zstd", zstandard.ZstdCompressor().compress),
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),  # RFC 9110 §8.4.1.3: the same as gzip
        ("deflate", zlib.compress),
        ("deflate", raw_deflate),  # what some servers send as deflate
        ("gzip, br", lambda data: brotli.compress(gzip.compress(data))),
    ],
)
def test_compressed_bodies_are_decoded_even_unasked(site: Site, coding: str, compress) -> None:
    url = serve(site, "/coded", compress(b'<p class="p">89</p>'), "text/html", Content_Encoding=coding)
    code, out = check(url, "--selector", ".p", "--rule", "price < 100")
    assert (code, out["text"]) == (0, "89")
    _, headers = site.requests[-1]
    assert headers["Accept-Encoding"] == "gzip, deflate, br, zstd"


@pytest.mark.parametrize(
    ("coding", "body", "reason"),
    [
        ("x-squeeze", b"\x00\x01compressed", "unsupported Content-Encoding 'x-squeeze'"),
        ("compress", b"\x1f\x9d\x90", "unsupported Content-Encoding 'compress'"),
        ("br", b"this is not brotli at all", "cannot decode the body sent with Content-Encoding 'br'"),
        ("gzip", b"\x1f\x8b\x08 truncated", "cannot decode the body sent with Content-Encoding 'gzip'"),
        ("gzip", gzip.compress(b"<p>" * 500)[:20] + b"garbage", "Content-Encoding 'gzip'"),
        ("gzip", gzip.compress(b"<p>" * 500)[:-30], "the gzip stream ends early"),
        ("zstd", zstandard.ZstdCompressor().compress(b"<p>" * 500)[:-5], "the zstd stream ends early"),
        ("br", brotli.compress(b"<p>" * 5000)[:-3], "Content-Encoding 'br'"),
        ("deflate", b"\x78\x9c not deflate", "not deflate"),
    ],
)
def test_a_body_that_cannot_be_decoded_fails_with_one_line(site: Site, coding: str, body: bytes, reason: str) -> None:
    url = serve(site, f"/bad-{coding}", body, "text/html", Content_Encoding=coding)
    code, out = check(url)
    assert code == 1 and reason in out["error"]
    assert out["error"].count("error:") == 1 and "Traceback" not in out["error"]


def test_a_decompression_bomb_stops_at_the_body_limit(site: Site) -> None:
    bomb = gzip.compress(b"\0" * (11 * 1024 * 1024))  # 11 MiB of zeros in about 11 KB; the limit is 10 MiB
    code, out = check(serve(site, "/bomb", bomb, "text/html", Content_Encoding="gzip"))
    assert code == 1 and "over the 10485760 byte limit" in out["error"]


def test_gzip_bytes_without_a_content_encoding_are_not_text(site: Site) -> None:
    url = serve(site, "/sneaky", gzip.compress(b"<p>hello</p>"), "text/html")
    code, out = check(url)
    assert code == 0 and out["kind"] == "binary" and "hello" not in out["text"]
    assert out["text"].startswith("gzip-compressed data, ")


# 2. Content kinds


def test_json_served_as_text_plain_takes_a_jsonpath(site: Site) -> None:
    url = serve(site, "/item.txt", b'{"stock": 3, "item": {"price": 120.0}}', "text/plain")
    code, out = check(url, "--selector", "$.item.price", "--rule", "price < 100")
    assert code == 3 and out["text"] in ("120", "120.0") and out["relevant"] is False and out["kind"] == "json"


@pytest.mark.parametrize(
    ("selector", "text"),
    [
        ("$.items[0].price", "95"),
        ("$.items[*].price", "95\n130"),
        ("$.items[?(@.price < 100)].name", "kettle"),
        ("items.1.name", "jug"),  # the dotted form
        ("$.items.1.name", "jug"),
        ("$..name", "kettle\njug"),
        ("$['shop-name']", "Küche"),
        ("$.items[-1]", '{\n"name": "jug",\n"price": 130\n}'),
    ],
)
def test_jsonpath_selectors(site: Site, selector: str, text: str) -> None:
    body = json.dumps({"shop-name": "Küche", "items": [{"price": 95, "name": "kettle"}, {"price": 130, "name": "jug"}]})
    code, out = check(serve(site, "/items.json", body.encode(), "text/html; charset=utf-8"), "--selector", selector)
    assert code == 0 and out["text"] == text and out["kind"] == "json"


def test_a_json_array_at_the_root(site: Site) -> None:
    url = serve(site, "/list.json", b'[{"price": "1.299,00 \\u20ac"}]', "application/json")
    code, out = check(url, "--selector", "$[0].price", "--rule", "price > 1000")
    assert (code, out["text"]) == (0, "1.299,00 €")


ATOM = b"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>Releases</title>
<entry><title>v2.0</title><link href="https://example.com/v2.0"/><updated>2026-11-02T10:00:00Z</updated>
<summary type="html">&lt;p&gt;Faster &lt;b&gt;and&lt;/b&gt; smaller&lt;/p&gt;</summary></entry>
<entry><title>v1.9</title><link href="https://example.com/v1.9"/><updated>2026-10-01T10:00:00Z</updated></entry>
</feed>"""


def test_css_selectors_apply_to_an_atom_feed(site: Site) -> None:
    code, out = check(serve(site, "/releases.atom", ATOM, "application/atom+xml"), "--selector", "entry title")
    assert code == 0 and out["text"] == "v2.0\nv1.9" and "<" not in out["text"] and out["kind"] == "feed"


def test_a_feed_without_a_selector_is_its_entries(site: Site) -> None:
    code, out = check(serve(site, "/releases2.atom", ATOM, "text/xml"), "--rule", '"v2.0"')
    lines = out["text"].splitlines()
    assert lines[:5] == ["Releases", "v2.0", "https://example.com/v2.0", "2026-11-02T10:00:00Z", "Faster and smaller"]
    assert "v1.9" in lines and "<" not in out["text"] and code == 0


@pytest.mark.parametrize(
    ("selector", "text"),
    [
        ("//entry[1]/title", "v2.0"),
        ("xpath:count(//entry)", "2"),
        ("//entry/link/@href", "https://example.com/v2.0\nhttps://example.com/v1.9"),
    ],
)
def test_xpath_and_css_on_xml(site: Site, selector: str, text: str) -> None:
    code, out = check(serve(site, "/x.atom", ATOM, "application/atom+xml"), "--selector", selector)
    assert code == 0 and out["text"] == text


def test_rss_and_rdf_feeds(site: Site) -> None:
    rss = b"""<rss version="2.0"><channel><title>Shop</title><item><title>Kettle 89 EUR</title>
    <link>https://example.com/k</link><pubDate>Mon, 30 Nov 2026 10:00:00 GMT</pubDate>
    <description>Now &lt;i&gt;cheaper&lt;/i&gt;</description></item></channel></rss>"""
    code, out = check(serve(site, "/shop.rss", rss, "text/plain"), "--rule", "price < 100")
    assert out["kind"] == "feed" and "Kettle 89 EUR" in out["text"] and "Now cheaper" in out["text"]
    assert code == 0
    rdf = b"""<?xml version="1.0"?><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"
    xmlns="http://purl.org/rss/1.0/"><channel rdf:about="x"><title>Old</title></channel>
    <item rdf:about="https://example.com/1"><title>First</title><link>https://example.com/1</link></item></rdf:RDF>"""
    code, out = check(serve(site, "/old.rdf", rdf, "application/rdf+xml"), "--selector", "item title")
    assert code == 0 and out["text"] == "First"


def test_a_pdf_is_its_text_page_by_page(site: Site) -> None:
    url = serve(site, "/prices.pdf", make_pdf("Price list 2026", "Kettle 89 EUR"), "application/octet-stream")
    code, out = check(url, "--rule", "/kettle/i")
    assert (code, out["kind"], out["text"]) == (0, "pdf", "Price list 2026\nKettle 89 EUR")


def test_a_broken_pdf_fails_with_a_reason(site: Site) -> None:
    code, out = check(serve(site, "/broken.pdf", b"%PDF-1.7\nnothing else", "application/pdf"))
    assert code == 1 and "cannot read the PDF" in out["error"]


def test_binary_content_is_watched_by_its_hash_and_says_so(site: Site) -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    code, out = check(serve(site, "/logo.png", png, "image/png"))
    assert code == 0 and out["kind"] == "binary" and out["note"] == "PNG image: watched by its SHA-256 hash only"
    assert out["text"].startswith("PNG image, 264 bytes, SHA-256 ")
    result = runner.invoke(app, ["check", site.url("/logo.png")])
    assert "(PNG image: watched by its SHA-256 hash only)" in result.stdout
    code, out = check(serve(site, "/logo.bin", b"\x00\x01\x02" * 10, "application/octet-stream"))
    assert out["text"].startswith("application/octet-stream content, 30 bytes, SHA-256 ")


@pytest.mark.parametrize(
    ("path", "body", "content_type", "selector", "reason"),
    [
        ("/h", b"<p class='a'>x</p>", "text/html", ".missing", "CSS selector '.missing' matched nothing"),
        ("/h", b"<p class='a'>x</p>", "text/html", "$.a", "jsonpath selector '$.a' cannot apply to an HTML page"),
        ("/j", b'{"a": 1}', "application/json", "$.b", "JSONPath '$.b' matched nothing"),
        ("/j", b'{"a": 1}', "application/json", ".a", "cannot apply to JSON; use a JSONPath"),
        ("/j", b'{"a": 1}', "application/json", "//a", "cannot apply to JSON"),
        ("/x", b"<?xml version='1.0'?><r><a>1</a></r>", "application/xml", "b", "matched nothing"),
        ("/x", b"<?xml version='1.0'?><r><a>1</a></r>", "application/xml", "$.a", "cannot apply to an XML document"),
        ("/t", b"just text", "text/plain", ".a", "a selector cannot apply to plain text"),
        ("/p", make_pdf("x"), "application/pdf", ".a", "a selector cannot apply to a PDF"),
        ("/b", b"\x89PNG\r\n\x1a\n", "image/png", ".a", "a selector cannot apply to binary content"),
        ("/n", b'{"a": 1', "application/json", None, "body is not JSON"),
    ],
)
def test_a_selector_that_cannot_apply_is_an_error_for_every_kind(
    site: Site, path: str, body: bytes, content_type: str, selector: str | None, reason: str
) -> None:
    code, out = check(serve(site, path, body, content_type), *(["--selector", selector] if selector else []))
    assert code == 1 and reason in out["error"]


@pytest.mark.parametrize("selector", ["p[", "div >", "$.a[", "//p[", "xpath:", "a[[b", "div >> p"])
def test_a_malformed_selector_is_bad_input(site: Site, selector: str) -> None:
    url, asked = serve(site, "/m", b"<p>x</p>", "text/html"), len(site.requests)
    code, out = check(url, "--selector", selector)
    assert code == 2 and "selector" in out["error"].lower()
    assert len(site.requests) == asked  # refused before anything was fetched


# 3. Numbers


def test_the_first_of_two_prices_is_compared(site: Site) -> None:
    body = b'<div><span class="price">89.99</span> <span class="price">120.00</span></div>'
    code, out = check(serve(site, "/two", body, "text/html"), "--selector", ".price", "--rule", "price < 100")
    assert (code, out["relevant"], out["evidence"]) == (0, True, ["89.99"])


@pytest.mark.parametrize(
    ("shown", "number"),
    [
        ("1.299,00 €", 1299),
        ("$1,299.99", 1299.99),
        ("from 99", 99),
        ("1 299,00 kr", 1299),
        ("2.499 €", 2499),
        ("1\u00a0299,00\u00a0€", 1299),
        ("12'345.50 CHF", 12345.5),
        ("RTX-4090 for 1599", 1599),
        ("Size 42\nPrice 89", 42),
        ("\u22125 °C", -5),  # U+2212 MINUS SIGN,
    ],
)
def test_prices_as_shops_write_them(site: Site, shown: str, number: float) -> None:
    body = f"<p class='p'>{shown}</p>".replace("\n", "<br>").encode()
    code, out = check(
        serve(site, "/num", body, "text/html; charset=utf-8"), "--selector", ".p", "--rule", "x > -1000000"
    )
    assert code == 0 and out["summary"] == f"x is {number:g}, > -1000000"


@pytest.mark.parametrize("shown", ["no price today", "v2 H2O", "9" * 400, "N/A", "RTX-4090", "version-2"])
def test_no_readable_number_is_said_never_raised(site: Site, shown: str) -> None:
    code, out = check(serve(site, "/none", f"<p class='p'>{shown}</p>".encode(), "text/html"), "--selector", ".p",
                      "--rule", "price < 100")  # fmt: skip
    assert code == 3 and out["summary"] == "no number found for price"


# Found by trying pages as a new user would (kinds of the faults above)


@pytest.mark.parametrize(
    ("body", "content_type", "text"),
    [
        # No declaration: a Western page in windows-1252, what browsers fall back to.
        ("<p class='t'>Crème brûlée — 12,50 €</p>".encode("cp1252"), "text/html", "Crème brûlée — 12,50 €"),
        ("<p class='t'>Año nuevo, señor</p>".encode("cp1252"), "text/html", "Año nuevo, señor"),
        # A UTF-16 label in <meta> on a page read as ASCII means UTF-8 (HTML §13.2.3.2).
        ('<meta charset="utf-16"><p class="t">héllo</p>'.encode(), "text/html", "héllo"),
    ],
)
def test_undeclared_and_misdeclared_charsets(site: Site, body: bytes, content_type: str, text: str) -> None:
    code, out = check(serve(site, "/u", body, content_type), "--selector", ".t")
    assert code == 0 and out["text"] == text


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ("\ufeffname,price\nCafé,5\n".encode("utf-16-le"), "text/csv"),  # a Windows CSV export
        ("name,price\nCafé,5\n".encode("utf-16-le"), "text/plain; charset=utf-16le"),
        ("crème brûlée,5\nname,price".encode("cp1252"), "text/plain"),
    ],
)
def test_utf16_and_undeclared_text_is_text(site: Site, body: bytes, content_type: str) -> None:
    code, out = check(serve(site, "/t.csv", body, content_type))
    assert code == 0 and out["kind"] == "text" and ("Café" in out["text"] or "crème brûlée" in out["text"])


def test_plain_text_that_starts_like_markup_stays_text(site: Site) -> None:
    body = b"<john@example.com> wrote:\nPrice is 5 <EUR>\nID3 tags are fine"
    code, out = check(serve(site, "/mail.txt", body, "text/plain"), "--rule", "price < 10")
    assert (code, out["kind"], out["text"]) == (
        0,
        "text",
        "<john@example.com> wrote:\nPrice is 5 <EUR>\nID3 tags are fine",
    )
    code, out = check(serve(site, "/id3.txt", b"ID3 tags are metadata in MP3 files", "text/plain"))
    assert out["kind"] == "text"


def test_an_empty_selection_is_an_error_and_an_empty_page_no_change(site: Site) -> None:
    code, out = check(serve(site, "/e", b"<p class='price'></p>", "text/html"), "--selector", ".price")
    assert code == 1 and "matched only empty text" in out["error"]
    code, out = check(serve(site, "/e", b"<div id='x'></div>", "text/html"), "--selector", "xpath:string(//nope)")
    assert code == 1 and "matched only empty text" in out["error"]
    code, out = check(serve(site, "/empty", b"", "text/plain"))
    assert (code, out["relevant"], out["summary"]) == (3, False, "unchanged")


@pytest.mark.parametrize(
    ("shown", "rule", "summary"),
    [
        ("価格は1980円", "price < 100000", "price is 1980, < 100000"),
        ("税込価格1,980円", "price < 100000", "price is 1980, < 100000"),
        ("Rs.1,299", "price < 100000", "price is 1299, < 100000"),
        ("Updated 2024-05-01 \u2013 price 50 €", "price < 100", "price is 50, < 100"),
        ("Sale ends 31.12.2026 at 23:59: 49,90 €", "price < 100", "price is 49.9, < 100"),
        ("1,234,567", "price < 1234568", "price is 1234567, < 1234568"),
    ],
)
def test_numbers_in_more_scripts_and_next_to_dates(site: Site, shown: str, rule: str, summary: str) -> None:
    code, out = check(serve(site, "/n", f"<p class='p'>{shown}</p>".encode(), "text/html; charset=utf-8"),
                      "--selector", ".p", "--rule", rule)  # fmt: skip
    assert (code, out["summary"]) == (0, summary)


def test_a_feed_whose_root_comes_after_a_stylesheet_and_a_long_comment(site: Site) -> None:
    rss = (b'<?xml version="1.0"?><?xml-stylesheet type="text/xsl" href="rss.xsl"?>'
           + b"<!-- " + b"x" * 1500 + b" -->"
           b'<rss version="2.0" xmlns:dc="http://purl.org/dc/elements/1.1/"><channel><title>Deals</title>'
           b"<item><title>Kettle</title><dc:creator>Ann</dc:creator>"
           b"<description>&lt;p&gt;Great &lt;b&gt;deal&lt;/b&gt;&lt;/p&gt;</description>"
           b"</item></channel></rss>")  # fmt: skip
    for content_type in ("application/xml", "text/html"):
        code, out = check(serve(site, "/deals", rss, content_type))
        assert code == 0 and out["kind"] == "feed" and "Great deal" in out["text"] and "<" not in out["text"]
    for selector in ("//dc:creator", "dc|creator", "creator", "//item/dc:creator/text()"):
        code, out = check(serve(site, "/deals", rss, "application/xml"), "--selector", selector)
        assert (code, out["text"]) == (0, "Ann"), selector


@pytest.mark.parametrize(
    ("selector", "text"),
    [("count(//p)", "2"), ("string(//p[2])", "b")],  # XPath without its prefix
)
def test_xpath_functions_need_no_prefix(site: Site, selector: str, text: str) -> None:
    code, out = check(serve(site, "/x", b"<p>a</p><p>b</p>", "text/html"), "--selector", selector)
    assert (code, out["text"]) == (0, text)


@pytest.mark.parametrize(("selector", "text"), [("items[0].price", "95"), ("items.*.n", "k\nj")])
def test_jsonpath_without_its_dollar(site: Site, selector: str, text: str) -> None:
    body = b'{"items": [{"price": 95, "n": "k"}, {"price": 130, "n": "j"}]}'
    code, out = check(serve(site, "/j", body, "application/json"), "--selector", selector)
    assert (code, out["text"]) == (0, text)


def test_a_pages_escape_sequences_never_reach_the_terminal(site: Site) -> None:
    serve(site, "/esc", b"<p class='t'>owned\x1b]0;owned\x07 and \x1b[2J</p>", "text/html")
    result = runner.invoke(app, ["check", site.url("/esc"), "--selector", ".t"])
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout and "owned" in result.stdout


def test_a_runaway_rule_fails_the_check_quickly(site: Site) -> None:
    url = serve(site, "/redos", b"<p class='x'>" + b"a" * 5000 + b"!</p>", "text/html")
    code, out = check(url, "--selector", ".x", "--rule", "/(a+)+$/")
    assert code == 2 and "took over 1s" in out["error"]
