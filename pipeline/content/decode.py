"""Bytes become text here, and nowhere else.

The encoding is chosen in the order browsers use (WHATWG Encoding Standard,
https://encoding.spec.whatwg.org/#decode, and HTML §13.2.3.2 "determining
the character encoding"):

1. a byte-order mark;
2. the ``charset`` of the HTTP ``Content-Type``;
3. what the document declares: ``<meta charset>`` or ``<meta http-equiv>``
   for HTML, the XML declaration for XML and feeds;
4. detection: bytes that are valid UTF-8 are UTF-8, anything else is
   charset-normalizer's best guess;
5. UTF-8, with U+FFFD for what cannot be decoded.

w3lib (Scrapy's encoding helpers) reads the BOM, the header and the
in-document declarations, and maps labels as browsers do (``latin-1`` and
``iso-8859-1`` are windows-1252, ``shift_jis`` is cp932); charset-normalizer
does the detection.  JSON and plain text have no in-document declaration.
"""

from __future__ import annotations

import codecs

import charset_normalizer
from w3lib.encoding import html_body_declared_encoding, http_content_type_encoding, read_bom, to_unicode

from pipeline.content.kinds import Kind

#: How much of the body detection reads: enough to decide, bounded for 10 MB bodies.
DETECT_BYTES = 64 * 1024


def decode(body: bytes, content_type: str | None, kind: Kind) -> tuple[str, str]:
    """``(encoding, text)``: the Python codec chosen (``utf-8``, ``cp1252``, ``cp932``...) and
    ``body`` decoded with it, without its byte-order mark.  Never raises."""
    encoding, body = _choose(body, content_type, kind)
    return encoding, to_unicode(body, encoding)


def _choose(body: bytes, content_type: str | None, kind: Kind) -> tuple[str, bytes]:
    bom_encoding, bom = read_bom(body)
    if bom_encoding and bom:
        return bom_encoding, body[len(bom) :]
    declared = http_content_type_encoding(content_type) if content_type else None
    if declared is None and kind in (Kind.HTML, Kind.XML, Kind.FEED):
        declared = html_body_declared_encoding(body)
        if declared and declared.startswith("utf-16") and kind is Kind.HTML:
            declared = "utf-8"  # a page read as ASCII cannot be UTF-16: browsers take UTF-8 (HTML §13.2.3.2)
    if declared and _known(declared):
        return declared, body
    return _detect(body), body


def _detect(body: bytes) -> str:
    sample = body[:DETECT_BYTES]
    try:
        sample.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError as e:
        if e.start >= len(sample) - 3 and len(body) > len(sample):
            return "utf-8"  # only the sample's cut split a character
    matches = charset_normalizer.from_bytes(sample)
    best = matches.best()
    if best is None:
        return "utf-8"
    # Short Western texts fit several single-byte codecs equally well; among the equals, take the one
    # browsers fall back to (windows-1252, HTML §13.2.3.3's default for most locales).
    tied = {m.encoding for m in matches if m.chaos <= best.chaos and m.coherence >= best.coherence}
    if "cp1252" in tied:
        return "cp1252"
    return best.encoding if _known(best.encoding) else "utf-8"


def _known(encoding: str) -> bool:
    try:
        codecs.lookup(encoding)
    except LookupError:
        return False
    return True
