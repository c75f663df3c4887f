"""Numbers in watched text, read one at a time, the way shops write them.

A number is a run of digits with the group and decimal separators shops use
(``1,299.99``, ``1.299,00``, ``1 299,00``, ``12'345.50``); it never spans a
line, and a space joins digits only before a group of exactly three
(``1 299``, not ``42 89``).  Which separator is the decimal one is
price-parser's to decide (Zyte's library, written for prices scraped from
shops).  A digit run glued to a word (``v2``, ``H2O``) or to a hyphenated
name (``RTX-4090``) is part of a name, not a number, and dates and times
(``2024-05-01``, ``01.05.2024``, ``12:30``) are not amounts; a ``-`` or U+2212
MINUS SIGN before a free-standing number is a minus sign.  Chinese and Japanese
put no spaces between words, so digits next to their characters stand free
(``価格は1980円``).

Nothing here raises: text that holds no readable number gives ``None``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from decimal import Decimal

from price_parser import parse_price

_NUMBER = re.compile(
    r"[0-9]{1,3}(?:[ \u00a0\u202f\u2009][0-9]{3})+(?![0-9])(?:[.,][0-9]+)?"  # 1 299 and 1 299,00
    r"|[0-9]+(?:[.,'\u2019][0-9]+)*"  # 89, 1,299.99, 1.299,00, 12'345.50 (and with U+2019 as the apostrophe)
)
_MINUS = "-\u2212"  # hyphen-minus and MINUS SIGN
#: Longer digit runs are identifiers or hashes, not amounts a rule compares.
MAX_DIGITS = 30


#: Dates and times are not amounts: 2024-05-01, 01.05.2024, 5/1/24, 12:30, 12:30:15.
_DATE_OR_TIME = re.compile(
    r"(?<![0-9])(?:[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}|[0-9]{1,2}[./][0-9]{1,2}[./](?:[0-9]{4}|[0-9]{2})"
    r"|[0-9]{1,2}:[0-9]{2}(?::[0-9]{2})?)(?![0-9])"
)


def numbers(text: str) -> Iterator[float]:
    """Every number in ``text``, in document order (finite floats)."""
    dates = [match.span() for match in _DATE_OR_TIME.finditer(text)]
    for match in _NUMBER.finditer(text):
        if any(start <= match.start() < end for start, end in dates):
            continue
        value = _read(text, match)
        if value is not None:
            yield value


def first_number(text: str) -> float | None:
    """The first number in ``text``: ``Price: 1,299.00 USD`` -> 1299.0, ``89,99 €`` -> 89.99."""
    return next(numbers(text), None)


def _in_word(char: str) -> bool:
    """Whether ``char`` joins a digit to a word: letters and digits of scripts that put spaces between
    words.  Chinese and Japanese do not (価格は1980円), so their characters leave a number free."""
    return bool(char) and char.isalnum() and not _UNSPACED.match(char)


#: CJK punctuation, kana, ideographs, Hangul syllables and full-width forms.
_UNSPACED = re.compile(r"[\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")


def format_number(value: float) -> str:
    """``1234567.0`` -> ``1234567``, ``89.99`` -> ``89.99``: as written, never in exponent form."""
    value = float(value)
    if abs(value) >= 1e21:  # past any amount; a float's digits there are noise
        return f"{value:g}"
    if value.is_integer():
        return str(int(value))
    return format(Decimal(repr(value)), "f")  # the shortest digits that read back as the same float


def _read(text: str, match: re.Match[str]) -> float | None:
    start, raw = match.start(), match.group()
    if sum(c.isdigit() for c in raw) > MAX_DIGITS:
        return None
    before = text[start - 1] if start else ""
    ahead = text[start - 2] if start > 1 else ""
    if _in_word(before) or before == "_" or before == "," or (before == "." and not ahead.isalpha()):
        return None  # inside a word or a longer token: v2, H2O, 1.2.3.4's later parts (but Rs.1,299 is a price)
    negative = False
    if before and before in _MINUS:
        if _in_word(ahead):
            return None  # a hyphenated name: RTX-4090
        negative = True
    try:
        amount = parse_price(raw.replace("\u2019", "'")).amount_float  # it knows only the ASCII apostrophe
    except Exception:  # price-parser's own guesswork; a number it cannot read is no number
        return None
    if amount is None or not math.isfinite(amount):
        return None
    return -amount if negative else amount
