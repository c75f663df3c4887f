"""The LLM analyser: questions about changes, answered by an OpenAI-compatible model under shared quotas.

The analyser and its prompt load the openai SDK when first used (PEP 562): a worker
that only needs the errors, for its retry rules, or runs no LLM at all, does not.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pipeline.llm.errors import LLMRejectedError, LLMUnavailableError
from pipeline.settings import APIKey, LLMSettings, SettingsError

if TYPE_CHECKING:
    from pipeline.llm.analyser import LLMAnalyser
    from pipeline.llm.prompt import InvalidVerdictError

_LAZY = {"LLMAnalyser": "analyser", "InvalidVerdictError": "prompt"}

__all__ = [
    "APIKey",
    "InvalidVerdictError",
    "LLMAnalyser",
    "LLMRejectedError",
    "LLMSettings",
    "LLMUnavailableError",
    "SettingsError",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
