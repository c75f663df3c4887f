"""From a fetched body to the normalised text a monitor watches.

One path for every body: decide its kind (``kinds``), turn bytes into text
(``decode``), apply the selector in the dialect that fits (``markup``,
``documents``), normalise.  Normalised text (Unicode NFKC, whitespace folded,
blank lines dropped) makes cosmetic edits no change.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

from pipeline.content import documents, markup
from pipeline.content.decode import decode
from pipeline.content.errors import ExtractError
from pipeline.content.kinds import Kind, binary_format, fallback, media_type, sniff
from pipeline.content.selectors import Selector, parse_selector


@dataclass(frozen=True)
class Extracted:
    """What a monitor watches in one body.

    ``text`` is normalised; ``kind`` is what the body was taken for; ``encoding``
    the codec its bytes were decoded with (``None`` for PDF and binary bodies);
    ``note`` says anything the user should know about how it is watched.
    """

    text: str
    kind: Kind
    encoding: str | None = None
    note: str = ""


def normalise(text: str) -> str:
    lines = (re.sub(r"\s+", " ", line).strip() for line in unicodedata.normalize("NFKC", text).splitlines())
    return "\n".join(line for line in lines if line)


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def extract(body: bytes, content_type: str | None, selector: str | None = None) -> Extracted:
    """The part of ``body`` (served as ``content_type``, the full header) that ``selector`` names.

    Raises ``SelectorError`` for a selector that is not valid in any dialect, and
    ``ExtractError`` for one that cannot apply to this body or matches nothing, or
    a body that is not what it claims to be.
    """
    chosen = parse_selector(selector) if selector else None
    extracted = _extract(body, content_type, chosen)
    if chosen is not None and not extracted.text:
        raise ExtractError(
            f"selector {chosen.text!r} matched only empty text (is that part of the page written by JavaScript?)"
        )
    return extracted


def _extract(body: bytes, content_type: str | None, chosen: Selector | None) -> Extracted:
    kind = sniff(body, content_type)
    if kind is Kind.PDF:
        _no_selector(chosen, "a PDF")
        return Extracted(normalise(documents.pdf_text(body)), kind)
    if kind is Kind.BINARY:
        _no_selector(chosen, "binary content")
        what = binary_format(body) or f"{media_type(content_type) or 'binary'} content"
        text = documents.binary_text(body, what)
        return Extracted(text, kind, note=f"{what}: watched by its SHA-256 hash only")
    encoding, text = decode(body, content_type, kind)
    if kind is Kind.JSON:
        try:
            document = documents.parse_json(text)
        except ExtractError:
            if media_type(content_type).endswith("json"):
                raise
            kind = fallback(content_type)  # only looked like JSON: a page or text starting with { or [
        else:
            return Extracted(normalise(documents.json_text(document, chosen)), kind, encoding)
    if kind is Kind.HTML:
        return Extracted(normalise(markup.html_text(text, chosen)), kind, encoding)
    if kind is Kind.FEED and chosen is None:
        return Extracted(normalise(markup.feed_text(text)), kind, encoding)
    if kind in (Kind.XML, Kind.FEED):
        return Extracted(normalise(markup.xml_text(text, chosen)), kind, encoding)
    _no_selector(chosen, "plain text")
    return Extracted(normalise(text), kind, encoding)


def _no_selector(selector: object, what: str) -> None:
    if selector is not None:
        raise ExtractError(f"a selector cannot apply to {what}; leave it out to watch the whole of it")
