"""The one error of the content package."""

from __future__ import annotations


class ExtractError(ValueError):
    """The body cannot give the text asked for: a selector that does not fit it or matched nothing,
    a body that is not what it claims (JSON, XML, PDF).  The message is one line, safe to show."""


class SelectorError(ExtractError):
    """A selector that is not valid in any dialect, whatever the body; the message says what would be."""
