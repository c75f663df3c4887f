"""What a body is: decided from the declared type *and* the bytes.

Servers mislabel content all the time (JSON as ``text/html``, feeds as
``text/plain``, PDFs as ``application/octet-stream``, gzip bytes with no
``Content-Encoding``), so the declared type is a hint and the first bytes
have the last word where they are unambiguous.  The signatures follow the
WHATWG MIME Sniffing Standard (https://mimesniff.spec.whatwg.org/, §7.1
"identifying a resource with an unknown MIME type"), plus the feed roots
and the compressed formats a monitor meets.
"""

from __future__ import annotations

import re
from enum import StrEnum


class Kind(StrEnum):
    """The kinds of body a monitor can watch; each has its own selectors (see ``select``)."""

    HTML = "html"
    XML = "xml"
    FEED = "feed"  # RSS, Atom or RDF: XML whose entries are the natural unit
    JSON = "json"
    PDF = "pdf"
    TEXT = "text"
    BINARY = "binary"  # images, archives, anything not text: watched by content hash only


#: How many leading bytes are looked at, as browsers do (WHATWG: 1445; 1024 is enough for a root tag).
SNIFF_BYTES = 1024

_BOMS = (b"\xef\xbb\xbf", b"\xfe\xff", b"\xff\xfe")

#: Signatures of binary formats (WHATWG §6.1 images, §6.2 audio/video, §6.3 archives), and compressed streams.
_BINARY_SIGNATURES = (
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"\xff\xd8\xff",  # JPEG
    b"RIFF",  # WebP, WAV, AVI
    b"OggS",
    b"ID3",  # MP3
    b"\x1a\x45\xdf\xa3",  # WebM, Matroska
    b"PK\x03\x04",  # ZIP (and docx, xlsx, jar)
    b"\x1f\x8b\x08",  # gzip
    b"\x28\xb5\x2f\xfd",  # zstd
    b"BZh",  # bzip2
    b"\xfd7zXZ\x00",  # xz
    b"7z\xbc\xaf\x27\x1c",
    b"Rar!\x1a\x07",
    b"\x00asm",  # WebAssembly
    b"wOFF",
    b"wOF2",
)

#: Declared types that are never text (an SVG, which is XML, starts with ``<`` and is sniffed before this).
_BINARY_FAMILIES = ("image/", "audio/", "video/", "font/")

#: WHATWG §3 "binary data byte": a control character that never appears in text.
_BINARY_BYTES = re.compile(rb"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f]")

_HTML_START = re.compile(
    rb"<(?:!doctype\s+html|html|head|body|script|iframe|h1|div|font|table|a|style|title|b|br|p|!--)[\s>/]",
    re.IGNORECASE,
)
_FEED_ROOT = re.compile(rb"<(?:rss|feed|rdf:RDF)[\s>]", re.IGNORECASE)
_HTML_ROOT = re.compile(rb"<html[\s>]", re.IGNORECASE)


def media_type(content_type: str | None) -> str:
    """``text/html`` from ``Text/HTML; charset=UTF-8``: the essence, lower case (RFC 9110 §8.3.1)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def sniff(body: bytes, content_type: str | None) -> Kind:
    """The kind of ``body``, served with the ``Content-Type`` header ``content_type`` (or none)."""
    declared = media_type(content_type)
    head = _skip_bom(body[:SNIFF_BYTES]).lstrip(b" \t\r\n\x0c")
    if head.startswith(b"%PDF-"):
        return Kind.PDF
    if head.startswith(_BINARY_SIGNATURES):
        return Kind.BINARY
    if _is_json_type(declared) or head[:1] in (b"{", b"["):
        return Kind.JSON  # bytes that only look like JSON are checked when parsed (``select``)
    if head.startswith(b"<"):
        return _markup_kind(head, declared)
    if declared == "application/pdf":
        return Kind.PDF
    if declared.startswith(_BINARY_FAMILIES) or _BINARY_BYTES.search(head):
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


def _skip_bom(data: bytes) -> bytes:
    for bom in _BOMS:
        if data.startswith(bom):
            return data[len(bom) :]
    return data


def _markup_kind(head: bytes, declared: str) -> Kind:
    if _FEED_ROOT.search(head):
        return Kind.FEED
    if declared in ("text/html", "application/xhtml+xml") or _HTML_ROOT.search(head) or _HTML_START.match(head):
        return Kind.HTML
    if head.startswith(b"<?xml") or _is_xml_type(declared):
        return Kind.XML
    return Kind.HTML if not declared or declared == "text/plain" else Kind.TEXT


def _is_json_type(declared: str) -> bool:
    return declared in ("application/json", "text/json") or declared.endswith("+json")


def _is_xml_type(declared: str) -> bool:
    return declared in ("application/xml", "text/xml") or declared.endswith("+xml")
