"""Scrape's pure part: turn a fetched body into normalised text, hash it, diff it.

HTML: a CSS selector (selectolax) when the monitor names one, otherwise the
page's main text (trafilatura), so navigation and footers do not count as
changes.  JSON: a dotted path (``items.0.price``) or the whole document in
canonical form.  Text is normalised (Unicode NFKC, whitespace folded, blank
lines dropped) so cosmetic edits are not changes.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import unicodedata

import trafilatura
from selectolax.lexbor import LexborHTMLParser

from pipeline.rules import Change


class ExtractError(ValueError):
    """The body cannot give the text asked for (bad selector, no match, bad JSON)."""


def normalise(text: str) -> str:
    lines = (re.sub(r"\s+", " ", line).strip() for line in unicodedata.normalize("NFKC", text).splitlines())
    return "\n".join(line for line in lines if line)


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def extract(body: bytes | str, content_type: str, selector: str | None = None) -> str:
    """The normalised text of ``body`` that a monitor watches."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    if content_type == "application/json" or content_type.endswith("+json"):
        return normalise(_from_json(text, selector))
    if content_type in ("text/html", "application/xhtml+xml") or (not content_type and "<" in text[:1000]):
        return normalise(_from_html(text, selector))
    return normalise(text)


def _from_html(html: str, selector: str | None) -> str:
    if selector:
        try:
            nodes = LexborHTMLParser(html).css(selector)
        except Exception as e:  # selectolax raises plain errors for bad selectors
            raise ExtractError(f"invalid CSS selector {selector!r}: {e}") from None
        if not nodes:
            raise ExtractError(f"CSS selector {selector!r} matched nothing")
        return "\n".join(node.text(separator=" ", strip=True) for node in nodes)
    main = trafilatura.extract(html, include_comments=False, include_tables=True)
    if main:
        return main
    body = LexborHTMLParser(html).body
    return body.text(separator="\n", strip=True) if body is not None else ""


def _from_json(text: str, path: str | None) -> str:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ExtractError(f"body is not JSON: {e}") from None
    for step in (path or "").removeprefix("$").strip(".").split(".") if path else []:
        if isinstance(value, list) and step.lstrip("-").isdigit() and -len(value) <= int(step) < len(value):
            value = value[int(step)]
        elif isinstance(value, dict) and step in value:
            value = value[step]
        else:
            raise ExtractError(f"JSON path {path!r} has no {step!r}")
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, indent=1, ensure_ascii=False)


def diff(before: str | None, after: str) -> Change:
    """Lines added and removed between two normalised texts."""
    if before is None:
        return Change(None, after, tuple(after.splitlines()), ())
    added, removed = [], []
    for line in difflib.ndiff(before.splitlines(), after.splitlines()):
        if line.startswith("+ "):
            added.append(line[2:])
        elif line.startswith("- "):
            removed.append(line[2:])
    return Change(before, after, tuple(added), tuple(removed))
