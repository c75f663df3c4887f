"""Content codings (RFC 9110 §8.4.1): gzip, deflate, br and zstd, decoded strictly and within a size limit.

The fetcher reads the raw bytes and decodes them here rather than through
httpx, for three reasons: a stream that ends early or holds garbage after its
header must fail the check (zlib alone hands back what it could decode, and
compressed bytes must never become the page's text); the output is bounded
as it is produced (a decompression bomb stops at the body limit, not after);
and ``x-gzip``, which RFC 9110 says is gzip, is understood.  The codecs
themselves are zlib, brotli and zstandard.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

#: Each coding this module decodes, by every name servers use for it.
CODINGS = ("gzip", "x-gzip", "deflate", "br", "zstd")
#: What the fetcher asks for (``Accept-Encoding``): each coding once.
ACCEPT = "gzip, deflate, br, zstd"
#: Output produced per step at most; a chunk that expands further is produced in several steps.
STEP = 64 * 1024


class CodingError(ValueError):
    """The body is not what its ``Content-Encoding`` says, or ends before its stream does."""


class BodyTooLargeError(ValueError):
    """The decoded body passed the size limit."""


def unknown(header: str) -> list[str]:
    """The codings in a ``Content-Encoding`` header that are not decoded here."""
    return [coding for coding in parse(header) if coding not in CODINGS]


def parse(header: str) -> list[str]:
    """``gzip, br`` -> ``["gzip", "br"]``: in the order they were applied; ``identity`` dropped."""
    codings = [coding.strip().lower() for coding in header.split(",")]
    return [coding for coding in codings if coding and coding != "identity"]


def decode(raw: Iterable[bytes], header: str, max_bytes: int) -> bytes:
    """The body that ``raw`` chunks encode with ``header``'s codings, at most ``max_bytes`` long.

    Raises ``CodingError`` for a corrupt or cut-off stream, ``BodyTooLargeError`` past the limit.
    """
    stream: Iterable[bytes] = raw
    for coding in reversed(parse(header)):  # the last applied is undone first
        stream = _decoded(stream, coding)
    chunks, size = [], 0
    for chunk in stream:
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLargeError(f"body is over the {max_bytes} byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _decoded(stream: Iterable[bytes], coding: str) -> Iterator[bytes]:
    if coding in ("gzip", "x-gzip"):
        yield from _zlib(stream, lambda: zlib.decompressobj(16 + zlib.MAX_WBITS), coding)
    elif coding == "deflate":
        yield from _deflate(stream)
    elif coding == "br":
        yield from _brotli(stream)
    else:
        yield from _zstd(stream)


def _zlib(stream: Iterable[bytes], new: Callable[[], Any], coding: str) -> Iterator[bytes]:
    decompressor = new()
    try:
        for chunk in stream:
            data = chunk
            while data:
                yield decompressor.decompress(data, STEP)
                data = decompressor.unconsumed_tail
                if decompressor.eof and decompressor.unused_data.strip(b"\x00"):
                    raise CodingError(f"data after the end of the {coding} stream")
        yield decompressor.flush()
    except zlib.error as e:
        raise CodingError(f"not {coding}: {e}") from None
    if not decompressor.eof:
        raise CodingError(f"the {coding} stream ends early")


def _deflate(stream: Iterable[bytes]) -> Iterator[bytes]:
    """``deflate`` is zlib-wrapped by the RFC, raw in some servers: the first byte tells (0x78 is zlib's)."""
    chunks = iter(stream)
    first = next(chunks, b"")
    wbits = zlib.MAX_WBITS if first[:1] == b"\x78" else -zlib.MAX_WBITS
    yield from _zlib(_prepend(first, chunks), lambda: zlib.decompressobj(wbits), "deflate")


def _brotli(stream: Iterable[bytes]) -> Iterator[bytes]:
    import brotli

    decompressor = brotli.Decompressor()
    try:
        for chunk in stream:
            yield decompressor.process(chunk, output_buffer_limit=STEP)
            while not decompressor.can_accept_more_data():
                yield decompressor.process(b"", output_buffer_limit=STEP)
    except brotli.error as e:
        raise CodingError(f"not br: {e}") from None
    if not decompressor.is_finished():
        raise CodingError("the br stream ends early")


def _zstd(stream: Iterable[bytes]) -> Iterator[bytes]:
    import zstandard

    # A small window bounds the decoder's memory; chunks are fed small, so one step's output is bounded too.
    decompressor = zstandard.ZstdDecompressor(max_window_size=1 << 23).decompressobj()
    try:
        for chunk in stream:
            for start in range(0, len(chunk), 1024):
                yield decompressor.decompress(chunk[start : start + 1024])
    except zstandard.ZstdError as e:
        raise CodingError(f"not zstd: {e}") from None
    if not decompressor.eof:
        raise CodingError("the zstd stream ends early")


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest
