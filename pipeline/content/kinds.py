"""What a body is: decided from the declared type *and* the bytes.

Servers mislabel content all the time (JSON as ``text/html``, feeds as
``text/plain``, PDFs as ``application/octet-stream``, gzip bytes with no
``Content-Encoding``), so the declared type is a hint and the first bytes
have the last word where they are unambiguous.  The signatures follow the
WHATWG MIME Sniffing Standard (https://mimesniff.spec.whatwg.org/, §6 and
§7.1 "identifying a resource with an unknown MIME type"), plus the feed roots
(§7.3, after comments and processing instructions) and compressed formats.
"""

from __future__ import annotations

import re
from enum import StrEnum


class Kind(StrEnum):
    """The kinds of body a monitor can watch; each has its own selectors (see ``selectors``)."""

    HTML = "html"
    XML = "xml"
    FEED = "feed"  # RSS, Atom or RDF: XML whose entries are the natural unit
    JSON = "json"
    PDF = "pdf"
    TEXT = "text"
    BINARY = "binary"  # images, archives, anything not text: watched by content hash only


#: How many leading bytes decide (WHATWG reads 1445; comments and processing instructions are skipped first).
SNIFF_BYTES = 8192

_UTF16_BOMS = {b"\xff\xfe": "utf-16-le", b"\xfe\xff": "utf-16-be"}

#: Signatures of binary formats (WHATWG §6.1 images, §6.2 audio/video, §6.3 archives), and compressed streams.
_SIGNATURES: tuple[tuple[re.Pattern[bytes], str], ...] = tuple(
    (re.compile(pattern, re.DOTALL), name)
    for pattern, name in (
        (rb"\x89PNG\r\n\x1a\n", "PNG image"),
        (rb"GIF8[79]a", "GIF image"),
        (rb"\xff\xd8\xff", "JPEG image"),
        (rb"RIFF....(?:WEBP|WAVE|AVI )", "RIFF media"),
        (rb"OggS\x00", "Ogg media"),
        (rb"ID3[\x02-\x04]", "MP3 audio"),
        (rb"\x1a\x45\xdf\xa3", "WebM/Matroska media"),
        (rb"....ftyp", "MP4 media"),
        (rb"PK\x03\x04", "ZIP archive"),
        (rb"\x1f\x8b\x08", "gzip-compressed data"),
        (rb"\x28\xb5\x2f\xfd", "zstd-compressed data"),
        (rb"BZh[1-9]1AY&SY", "bzip2-compressed data"),
        (rb"\xfd7zXZ\x00", "xz-compressed data"),
        (rb"7z\xbc\xaf\x27\x1c", "7-Zip archive"),
        (rb"Rar!\x1a\x07", "RAR archive"),
        (rb"\x00asm", "WebAssembly"),
        (rb"wOF[F2]", "web font"),
    )
)

#: WHATWG §3 "binary data byte": a control character that never appears in text.
_BINARY_BYTES = re.compile(rb"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f]")
#: Declared types that are never text (an SVG, which is XML, starts with ``<`` and is sniffed before this).
_BINARY_FAMILIES = ("image/", "audio/", "video/", "font/")

_HTML_START = re.compile(
    rb"<(?:!doctype\s+html|html|head|body|script|iframe|h1|div|font|table|a|style|title|b|br|p|meta|link)[\s>/]",
    re.IGNORECASE,
)
#: What may stand before the root element: white space, comments, processing instructions, a doctype.
_PROLOGUE = re.compile(rb"(?:\s+|<!--.*?-->|<\?.*?\?>|<!DOCTYPE[^>\[]*(?:\[.*?\])?\s*>)*", re.DOTALL | re.IGNORECASE)
_ROOT = re.compile(rb"<([A-Za-z_][\w.:-]*)")
_FEED_ROOTS = {b"rss", b"feed", b"rdf:rdf"}


def media_type(content_type: str | None) -> str:
    """``text/html`` from ``Text/HTML; charset=UTF-8``: the essence, lower case (RFC 9110 §8.3.1)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def binary_format(body: bytes) -> str | None:
    """What a binary body's signature says it is (``"PNG image"``), or None."""
    head = body[:64]
    return next((name for pattern, name in _SIGNATURES if pattern.match(head)), None)


def sniff(body: bytes, content_type: str | None) -> Kind:
    """The kind of ``body``, served with the ``Content-Type`` header ``content_type`` (or none)."""
    declared = media_type(content_type)
    head = _head(body, content_type).lstrip(b" \t\r\n\x0c")
    if head.startswith(b"%PDF-") or (declared == "application/pdf" and b"%PDF-" in head[:1024]):
        return Kind.PDF
    if binary_format(head):
        return Kind.BINARY
    if _is_json_type(declared) or head[:1] in (b"{", b"["):
        return Kind.JSON  # bytes that only look like JSON are checked when parsed (``extract``)
    if head.startswith(b"<"):
        return _markup_kind(head, declared)
    if declared == "application/pdf":
        return Kind.PDF
    if declared.startswith(_BINARY_FAMILIES) or _BINARY_BYTES.search(head[:1024]):
        return Kind.BINARY
    return Kind.HTML if declared in ("text/html", "application/xhtml+xml") else Kind.TEXT


def fallback(content_type: str | None) -> Kind:
    """What a body that looked like JSON but is not, is: its declared kind, else text."""
    declared = media_type(content_type)
    if declared in ("text/html", "application/xhtml+xml"):
        return Kind.HTML
    if _is_xml_type(declared):
        return Kind.XML
    return Kind.TEXT


def _head(body: bytes, content_type: str | None) -> bytes:
    """The first bytes as UTF-8 for sniffing, so UTF-16 text (with a BOM or declared) is not taken for binary."""
    head = body[:SNIFF_BYTES]
    for bom, codec in _UTF16_BOMS.items():
        if head.startswith(bom):
            return head[2:].decode(codec, "ignore").encode()
    if head.startswith(b"\xef\xbb\xbf"):
        return head[3:]
    charset = (content_type or "").lower().partition("charset=")[2].strip(" \"'").split(";")[0]
    if charset.startswith("utf-16"):
        return head.decode(charset if charset != "utf-16" else "utf-16-le", "ignore").encode()
    return head


def _markup_kind(head: bytes, declared: str) -> Kind:
    root = _ROOT.match(head, _PROLOGUE.match(head).end())  # type: ignore[union-attr]  # the pattern matches ""
    name = root.group(1).lower() if root else b""
    if name in _FEED_ROOTS:
        return Kind.FEED
    looks_like_html = name == b"html" or bool(_HTML_START.match(head))
    if declared in ("text/html", "application/xhtml+xml") or looks_like_html:
        return Kind.HTML
    if head.startswith(b"<?xml") or _is_xml_type(declared):
        return Kind.XML
    return Kind.TEXT  # text that starts with "<", like "<john@example.com> wrote:"


def _is_json_type(declared: str) -> bool:
    return declared in ("application/json", "text/json") or declared.endswith("+json")


def _is_xml_type(declared: str) -> bool:
    return declared in ("application/xml", "text/xml") or declared.endswith("+xml")
