"""The LLM analyser: questions about changes, answered by an OpenAI-compatible model under shared quotas."""

from pipeline.llm.analyser import LLMAnalyser, LLMRejectedError, LLMUnavailableError
from pipeline.llm.prompt import InvalidVerdictError
from pipeline.settings import APIKey, LLMSettings, SettingsError

__all__ = [
    "APIKey",
    "InvalidVerdictError",
    "LLMAnalyser",
    "LLMRejectedError",
    "LLMSettings",
    "LLMUnavailableError",
    "SettingsError",
]
