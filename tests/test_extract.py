"""Extraction, normalisation and diffs."""

from __future__ import annotations

import pytest

from pipeline.extract import ExtractError, content_hash, diff, extract, normalise

PAGE = b"""<html><body><nav>Home | Shop</nav><main><article><h1>Blue kettle</h1>
<p class="price">Price: 1,299.00 USD</p>
<p>This kettle boils water quickly and quietly, with an automatic shut-off and a long cord.</p>
<p>Delivery in three to five working days across the country, free for members of the club.</p>
</article></main><footer>Copyright 2026</footer></body></html>"""


def test_a_css_selector_picks_the_watched_text() -> None:
    assert extract(PAGE, "text/html", ".price") == "Price: 1,299.00 USD"


def test_without_a_selector_the_main_text_is_kept_and_chrome_dropped() -> None:
    text = extract(PAGE, "text/html")
    assert "boils water" in text
    assert "Copyright" not in text and "Home | Shop" not in text


def test_selector_errors_are_clear() -> None:
    with pytest.raises(ExtractError, match="matched nothing"):
        extract(PAGE, "text/html", ".missing")
    with pytest.raises(ExtractError, match="invalid CSS selector"):
        extract(PAGE, "text/html", "p[")


def test_json_paths() -> None:
    body = b'{"items": [{"price": 95, "name": "kettle"}], "ok": true}'
    assert extract(body, "application/json", "items.0.price") == "95"
    assert extract(body, "application/json", "$.items.0.name") == "kettle"
    assert extract(body, "application/json") == extract(
        b'{"ok": true, "items": [{"name": "kettle", "price": 95}]}', "application/json"
    )
    with pytest.raises(ExtractError, match="has no 'nope'"):
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
