"""Selectors: which part of a body a monitor watches, in the dialect that fits the body.

=====================  ==========================================  =====================
Written as             Dialect                                     Applies to
=====================  ==========================================  =====================
``.price``, ``a > b``  CSS (lexbor for HTML, cssselect for XML)    HTML, XML, feeds
``//p[@id='x']``,      XPath 1.0 (lxml)                            HTML, XML, feeds
``xpath:(//p)[1]``
``$.items[0].price``   JSONPath (jsonpath-ng, with filters)        JSON
``items.0.price``      the dotted form: ``$.items[0].price``       JSON
=====================  ==========================================  =====================

A bare name such as ``price`` is both a CSS type selector and a dotted
path: it is CSS on markup and a key on JSON.  What is not CSS is tried as
XPath (``count(//p)``), then as JSONPath without its ``$`` (``items[0].price``).  Syntax is checked where a
selector enters (events, ``monitor add``, ``check``) by ``parse_selector``;
whether it fits the body is only known once the body is there.
"""

from __future__ import annotations

import contextlib
import functools
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pipeline.content.errors import SelectorError


class Dialect(StrEnum):
    CSS = "css"
    XPATH = "xpath"
    JSONPATH = "jsonpath"


@dataclass(frozen=True)
class Selector:
    """A checked selector: ``text`` as written, its ``dialect`` and the ``expression`` to evaluate.

    ``json_path`` is the JSONPath a CSS selector stands for on JSON (a dotted path), or None.
    """

    text: str
    dialect: Dialect
    expression: str
    json_path: str | None = None


_DOTTED = re.compile(r"(?:\$\.)?[A-Za-z_][\w-]*(?:\.[\w-]+)*")
_HINT = "CSS like .price, XPath like //p[@class='price'] (or xpath:...), JSONPath like $.item.price"


@functools.lru_cache(maxsize=1024)
def parse_selector(text: str) -> Selector:
    """Check ``text``'s syntax and tell its dialect; raises ``SelectorError`` with the reason."""
    text = text.strip()
    if not text:
        raise SelectorError("empty selector")
    if text.startswith("xpath:") or text.startswith(("/", "(")):
        expression = text.removeprefix("xpath:").strip()
        _compile_xpath(expression)
        return Selector(text, Dialect.XPATH, expression)
    dotted = _dotted_to_jsonpath(text)
    if text.startswith("$"):
        expression = dotted or text
        compile_jsonpath(expression)
        return Selector(text, Dialect.JSONPATH, expression)
    css_error = _css_error(text)
    if css_error is None:
        return Selector(text, Dialect.CSS, text, json_path=dotted)
    if dotted is not None:
        return Selector(text, Dialect.JSONPATH, dotted)
    # Not CSS: an XPath written without its prefix (count(//p)), or a JSONPath without its $ (items[0].price).
    with contextlib.suppress(SelectorError):
        _compile_xpath(text)
        return Selector(text, Dialect.XPATH, text)
    expression = "$" + text if text.startswith("[") else "$." + text
    with contextlib.suppress(SelectorError):
        compile_jsonpath(expression)
        return Selector(text, Dialect.JSONPATH, expression)
    raise SelectorError(f"invalid selector {text!r}: {css_error}; expected {_HINT}")


def _dotted_to_jsonpath(text: str) -> str | None:
    """``items.0.price`` -> ``$.items[0].price``; None when ``text`` is not a plain dotted path."""
    if not _DOTTED.fullmatch(text):
        return None
    steps = [step for step in text.removeprefix("$").split(".") if step]
    return "$" + "".join(f"[{step}]" if step.lstrip("-").isdigit() else f"['{step}']" for step in steps)


def _css_error(text: str) -> str | None:
    from selectolax.lexbor import LexborHTMLParser

    try:
        LexborHTMLParser("<html></html>").css(text)
    except Exception as e:  # selectolax raises a plain error for any syntax it cannot parse
        return f"not CSS ({e})"
    return None


def _compile_xpath(expression: str) -> None:
    from lxml import etree

    try:
        etree.XPath(expression)
    except etree.XPathError as e:
        raise SelectorError(f"invalid XPath {expression!r}: {e}") from None


@functools.lru_cache(maxsize=1024)
def compile_jsonpath(expression: str) -> Any:
    """The jsonpath-ng expression (its extended grammar: filters, arithmetic); raises ``SelectorError``."""
    from jsonpath_ng.ext import parse

    try:
        return parse(expression)
    except Exception as e:  # its lexer and parser raise their own errors, and some plain ones
        raise SelectorError(f"invalid JSONPath {expression!r}: {e}") from None
