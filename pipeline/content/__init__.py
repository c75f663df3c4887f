"""Content as it really is: bytes to text, the kind of a body, selectors, numbers, diffs.

``extract(body, content_type, selector)`` is the entry point the scrape stage
and ``pipeline check`` use; the rest is public for tests and tools.

The extraction and selector modules load when first used (PEP 562): a process
that only needs ``ExtractError`` or ``diff`` (every worker, for its retry rules;
the analyse stage) does not import lxml, lexbor, feedparser, pypdf and
trafilatura, which only scrape and ``pipeline check`` need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pipeline.content.diff import Change, diff
from pipeline.content.errors import ExtractError, SelectorError
from pipeline.content.kinds import Kind
from pipeline.content.numbers import first_number, numbers

if TYPE_CHECKING:
    from pipeline.content.extract import Extracted, content_hash, extract, normalise
    from pipeline.content.selectors import Selector, parse_selector

_LAZY = {
    "Extracted": "extract",
    "content_hash": "extract",
    "extract": "extract",
    "normalise": "extract",
    "Selector": "selectors",
    "parse_selector": "selectors",
}

__all__ = [
    "Change",
    "ExtractError",
    "Extracted",
    "Kind",
    "Selector",
    "SelectorError",
    "content_hash",
    "diff",
    "extract",
    "first_number",
    "normalise",
    "numbers",
    "parse_selector",
]


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{module_name}")
    # Loading ``extract`` set this package's attribute of that name to the module: the function wins.
    for other, where in _LAZY.items():
        if where == module_name:
            globals()[other] = getattr(module, other)
    return globals()[name]
