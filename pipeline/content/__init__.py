"""Content as it really is: bytes to text, the kind of a body, selectors, numbers, diffs.

``extract(body, content_type, selector)`` is the entry point the scrape stage
and ``pipeline check`` use; the rest is public for tests and tools.
"""

from pipeline.content.diff import Change, diff
from pipeline.content.errors import ExtractError, SelectorError
from pipeline.content.extract import Extracted, content_hash, extract, normalise
from pipeline.content.kinds import Kind
from pipeline.content.numbers import first_number, numbers
from pipeline.content.selectors import Selector, parse_selector

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
