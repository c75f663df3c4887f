"""Numbers in watched text, read one at a time, the way shops write them.

A number is a run of digits with the group and decimal separators shops use
(``1,299.99``, ``1.299,00``, ``1 299,00``, ``12'345.50``); it never spans a
line, and a space joins digits only before a group of exactly three
(``1 299``, not ``42 89``).  Which separator is the decimal one is
price-parser's to decide (Zyte's library, written for prices scraped from
shops).  A digit run glued to a word (``v2``, ``H2O``) or to a hyphenated
name (``RTX-4090``, the ``05`` of ``2024-05-01``) is part of a name, not a
number; a ``-`` or U+2212 MINUS SIGN before a free-standing number is a minus sign.

Nothing here raises: text that holds no readable number gives ``None``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator

from price_parser import parse_price

_NUMBER = re.compile(
    r"[0-9]{1,3}(?:[ \u00a0\u202f\u2009][0-9]{3})+(?![0-9])(?:[.,][0-9]+)?"  # 1 299 and 1 299,00
    r"|[0-9]+(?:[.,'\u2019][0-9]+)*"  # 89, 1,299.99, 1.299,00, 12'345.50 (and with U+2019 as the apostrophe)
)
_MINUS = "-\u2212"  # hyphen-minus and MINUS SIGN
#: Longer digit runs are identifiers or hashes, not amounts a rule compares.
MAX_DIGITS = 30


def numbers(text: str) -> Iterator[float]:
    """Every number in ``text``, in document order (finite floats)."""
    for match in _NUMBER.finditer(text):
        value = _read(text, match)
        if value is not None:
            yield value


def first_number(text: str) -> float | None:
    """The first number in ``text``: ``Price: 1,299.00 USD`` -> 1299.0, ``89,99 €`` -> 89.99."""
    return next(numbers(text), None)


def _read(text: str, match: re.Match[str]) -> float | None:
    start, raw = match.start(), match.group()
    if sum(c.isdigit() for c in raw) > MAX_DIGITS:
        return None
    before = text[start - 1] if start else ""
    if before and (before.isalnum() or before in "_.,"):
        return None  # inside a word or a longer token: v2, H2O, 1.2.3.4's later parts
    negative = False
    if before and before in _MINUS:
        ahead = text[start - 2] if start > 1 else ""
        if ahead.isalnum():
            return None  # a hyphenated name or a date: RTX-4090, 2024-05-01
        negative = True
    try:
        amount = parse_price(raw.replace("\u2019", "'")).amount_float  # it knows only the ASCII apostrophe
    except Exception:  # price-parser's own guesswork; a number it cannot read is no number
        return None
    if amount is None or not math.isfinite(amount):
        return None
    return -amount if negative else amount
