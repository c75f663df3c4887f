"""Extraction, normalisation and diffs."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.content import ExtractError, SelectorError, content_hash, diff, extract, normalise
from pipeline.content.kinds import Kind, sniff

PAGE = b"""<html><body><nav>Home | Shop</nav><main><article><h1>Blue kettle</h1>
<p class="price">Price: 1,299.00 USD</p>
<p>This kettle boils water quickly and quietly, with an automatic shut-off and a long cord.</p>
<p>Delivery in three to five working days across the country, free for members of the club.</p>
</article></main><footer>Copyright 2026</footer></body></html>"""


def test_a_css_selector_picks_the_watched_text() -> None:
    assert extract(PAGE, "text/html", ".price").text == "Price: 1,299.00 USD"


def test_without_a_selector_the_main_text_is_kept_and_chrome_dropped() -> None:
    text = extract(PAGE, "text/html").text
    assert "boils water" in text
    assert "Copyright" not in text and "Home | Shop" not in text


def test_selector_errors_are_clear() -> None:
    with pytest.raises(ExtractError, match="matched nothing"):
        extract(PAGE, "text/html", ".missing")
    with pytest.raises(SelectorError, match="invalid selector 'p\\['"):
        extract(PAGE, "text/html", "p[")


def test_json_paths() -> None:
    body = b'{"items": [{"price": 95, "name": "kettle"}], "ok": true}'
    assert extract(body, "application/json", "items.0.price").text == "95"
    assert extract(body, "application/json", "$.items.0.name").text == "kettle"
    assert (
        extract(body, "application/json").text
        == extract(b'{"ok": true, "items": [{"name": "kettle", "price": 95}]}', "application/json").text
    )
    with pytest.raises(ExtractError, match="matched nothing"):
        extract(body, "application/json", "items.0.nope")
    with pytest.raises(ExtractError, match="not JSON"):
        extract(b"{", "application/json")


def test_cosmetic_whitespace_is_not_a_change() -> None:
    assert normalise("  a\u00a0 b \n\n\tc  ") == "a b\nc"
    assert content_hash(normalise("a  b")) == content_hash(normalise("a b\n"))


def test_diff_lists_added_and_removed_lines() -> None:
    change = diff("price 120\nin stock", "price 95\nin stock")
    assert (change.added, change.removed) == (("price 95",), ("price 120",))
    assert diff(None, "x\ny").added == ("x", "y")


@settings(max_examples=300, deadline=None)
@given(
    body=st.binary(max_size=600)
    | st.sampled_from([b"{", b"[1,", b"<?xml", b"<rss>", b"%PDF-", b"\x89PNG\r\n\x1a\n", b"\xef\xbb\xbf{"]).flatmap(
        lambda head: st.binary(max_size=200).map(lambda tail: head + tail)
    ),
    content_type=st.sampled_from(
        [
            "",
            "text/html",
            "text/html; charset=shift_jis",
            "application/json",
            "text/plain; charset=bogus",
            "application/xml",
            "application/atom+xml",
            "application/pdf",
            "image/png",
            "application/octet-stream",
        ]
    ),
    selector=st.sampled_from([None, ".a", "$.a", "//a", "a", "a.0.b"]),
)
def test_any_body_gives_text_or_an_extract_error_never_another_exception(
    body: bytes, content_type: str, selector: str | None
) -> None:
    try:
        result = extract(body, content_type, selector)
    except ExtractError as e:
        assert str(e) and "\n" not in str(e)
    else:
        assert isinstance(result.text, str)


@pytest.mark.parametrize(
    ("body", "content_type", "kind"),
    [
        (b'{"a": 1}', "text/html", Kind.JSON),
        (b"  [1, 2]", "", Kind.JSON),
        (b"<!DOCTYPE html><p>x", "text/plain", Kind.HTML),
        (b"<p>x</p>", "", Kind.HTML),
        (b'<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom">', "text/html", Kind.FEED),
        (b"<rss version='2.0'>", "application/octet-stream", Kind.FEED),
        (b'<?xml version="1.0"?><html xmlns="http://www.w3.org/1999/xhtml">', "application/xml", Kind.HTML),
        (b"<?xml version='1.0'?><svg/>", "image/svg+xml", Kind.XML),
        (b"%PDF-1.7", "text/html", Kind.PDF),
        (b"whatever", "application/pdf", Kind.PDF),
        (b"\x1f\x8b\x08\x00", "text/html", Kind.BINARY),
        (b"\x28\xb5\x2f\xfd", "text/plain", Kind.BINARY),
        (b"GIF89a", "text/html", Kind.BINARY),
        (b"plain words", "image/jpeg", Kind.BINARY),
        (b"a,b\n1,2", "text/csv", Kind.TEXT),
        (b"\x00\x01\x02 bytes", "", Kind.BINARY),
        (b"just words", "", Kind.TEXT),
    ],
)
def test_the_kind_comes_from_the_declared_type_and_the_bytes(body: bytes, content_type: str, kind: Kind) -> None:
    assert sniff(body, content_type) is kind


def test_text_that_only_looks_like_json_is_its_declared_kind() -> None:
    assert extract(b"{{ template }} <p class='a'>x</p>", "text/html", ".a").text == "x"
    assert extract(b"[citation needed]", "text/plain").text == "[citation needed]"


def test_xml_entities_and_dtds_are_never_resolved(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET")
    body = f'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file://{secret}">]><r><a>&x;</a><a>ok</a></r>'
    assert "TOP SECRET" not in extract(body.encode(), "application/xml").text
    assert "TOP SECRET" not in extract(body.encode(), "application/xml", "a").text


def test_xpath_reads_past_256_elements_deep() -> None:
    # lxml stops at 256 elements deep unless told otherwise, and whatever lies deeper was silently missing
    page = b"<html><body>" + b"<section><div>" * 200 + b"<p>9 EUR</p>" + b"</div></section>" * 200 + b"</body></html>"
    assert extract(page, "text/html", "//p").text == "9 EUR"


@pytest.mark.parametrize(
    "selector", ["#main .product .price", ".product > .box > .price", "//div[@class='product']/div/p"]
)
def test_sloppy_markup_before_the_price_does_not_move_it(selector: str) -> None:
    # Unclosed <div> in table cells (their </td> closes them) and <div> in a script's strings: a scan of tags
    # that took them for nesting once rewrote this page so that these selectors matched nothing.
    rows = "<table>" + "<tr><td><div>item</td></tr>" * 300 + "</table>" + "<br>" * 9000
    script = "<script>var t = [" + ",".join(["'<div>'"] * 210) + "];</script>"
    page = f"<html><body>{rows}{script}<div id=main><div class=product><div class=box><p class=price>9 EUR</p>"
    assert extract(page.encode(), "text/html", selector).text == "9 EUR"


def test_a_page_past_the_main_text_limit_is_watched_whole() -> None:
    from pipeline.content.markup import MAIN_TEXT_MAX_CHARS

    article = "<p>" + "A sentence of the article that trafilatura would keep as main text. " * 20 + "</p>"
    nav = "<nav>Home | Shop | Contact</nav>"
    small = f"<html><body>{nav}<main><article>{article}</article></main></body></html>".encode()
    assert "Home | Shop" not in extract(small, "text/html").text  # the main text only
    padding = "<div>padding</div>" * (MAIN_TEXT_MAX_CHARS // 18 + 1)
    big = f"<html><body>{nav}<main><article>{article}</article></main>{padding}</body></html>".encode()
    text = extract(big, "text/html").text
    assert text.startswith("Home | Shop | Contact") and "A sentence of the article" in text
