"""The LLM analyser's settings, from the environment, checked once at start."""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field

#: USD per million tokens (prompt, completion); ``PIPELINE_LLM_PRICES`` adds or overrides models.
DEFAULT_PRICES = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
}


class SettingsError(ValueError):
    """A setting that cannot work; the message names the variable."""


@dataclass(frozen=True)
class APIKey:
    """One key of the pool.  ``label`` stands for it wherever a key must be named."""

    secret: str = field(repr=False)
    label: str

    @classmethod
    def of(cls, secret: str) -> APIKey:
        # A fingerprint, stable across processes and config order, that reveals nothing of the key.
        return cls(secret, "key-" + hashlib.sha256(secret.encode()).hexdigest()[:8])


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if not (0 < value < math.inf):
        raise SettingsError(f"{name} must be a finite number > 0, got {raw!r}")
    return value


@dataclass(frozen=True)
class LLMSettings:
    """See the README's settings table; every field has a ``PIPELINE_LLM_*`` variable."""

    keys: tuple[APIKey, ...]
    base_url: str | None = None
    model: str = "gpt-4o-mini"
    rpm: float = 500  # OpenAI's tier-1 quota for gpt-4o-mini
    tpm: float = 200_000
    quota_period: float = 60.0
    margin: float = 0.8
    max_wait: float = 10.0
    timeout: float = 60.0
    max_completion_tokens: int = 400
    max_input_chars: int = 16_000
    prices: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_PRICES))

    @classmethod
    def from_env(cls) -> LLMSettings | None:
        """None when no key is configured: monitors are then judged by their rules alone."""
        raw = os.environ.get("PIPELINE_OPENAI_API_KEYS") or os.environ.get("OPENAI_API_KEY") or ""
        secrets = [k.strip() for k in raw.split(",") if k.strip()]
        if not secrets:
            return None
        prices = dict(DEFAULT_PRICES)
        if os.environ.get("PIPELINE_LLM_PRICES"):
            try:
                prices.update(
                    {m: (float(p[0]), float(p[1])) for m, p in json.loads(os.environ["PIPELINE_LLM_PRICES"]).items()}
                )
            except (ValueError, TypeError, IndexError, AttributeError):
                raise SettingsError('PIPELINE_LLM_PRICES must look like {"model": [prompt, completion]}') from None
        margin = _float("PIPELINE_LLM_MARGIN", 0.8)
        if margin > 1:
            raise SettingsError(f"PIPELINE_LLM_MARGIN is a share of the quota, at most 1, got {margin}")
        return cls(
            keys=tuple(APIKey.of(s) for s in dict.fromkeys(secrets)),
            base_url=os.environ.get("PIPELINE_OPENAI_BASE_URL") or os.environ.get("OPENAI_BASE_URL") or None,
            model=os.environ.get("PIPELINE_LLM_MODEL", "gpt-4o-mini"),
            rpm=_float("PIPELINE_LLM_RPM", 500),
            tpm=_float("PIPELINE_LLM_TPM", 200_000),
            quota_period=_float("PIPELINE_LLM_QUOTA_PERIOD", 60.0),
            margin=margin,
            max_wait=_float("PIPELINE_LLM_MAX_WAIT", 10.0),
            timeout=_float("PIPELINE_LLM_TIMEOUT", 60.0),
            max_completion_tokens=int(_float("PIPELINE_LLM_MAX_TOKENS", 400)),
            max_input_chars=int(_float("PIPELINE_LLM_MAX_INPUT_CHARS", 16_000)),
            prices=prices,
        )

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """USD for one call; 0 for a model without a price."""
        price_in, price_out = self.prices.get(self.model, (0.0, 0.0))
        return (prompt_tokens * price_in + completion_tokens * price_out) / 1_000_000
