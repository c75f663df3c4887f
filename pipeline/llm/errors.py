"""What the LLM analyser raises, in a module that imports nothing heavy (every worker's retry rules name them)."""

from __future__ import annotations


class LLMUnavailableError(Exception):
    """No key could take the call now; retry after ``after`` seconds (None: no server said, back off)."""

    def __init__(self, after: float | None, reason: str) -> None:
        super().__init__(reason)
        self.after = after


class LLMRejectedError(Exception):
    """The call can never succeed as it is (every key refused, or the request itself is wrong)."""
