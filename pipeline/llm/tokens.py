"""How many tokens a call will be charged before it is made.

Providers charge a request's tokens against the per-minute quota when it
arrives: OpenAI documents roughly ``characters / 4`` for the prompt plus
``max_completion_tokens``.  We reserve that much, or tiktoken's exact
prompt count when tiktoken is installed *and* its encoding file is already
cached (it would otherwise download it, and workers may have no internet);
after the call the usage the response reports is booked on top where it
was more (:meth:`pipeline.ratelimit.Limiter.charge`).
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import tempfile
from pathlib import Path
from typing import Any

#: Per message (role, separators) and per reply priming, as OpenAI's cookbook counts them.
MESSAGE_OVERHEAD = 4
REPLY_OVERHEAD = 3
_O200K = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"


@functools.cache
def _encoding() -> Any:
    try:
        import tiktoken
    except ImportError:
        return None
    cache = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
    directory = Path(cache) if cache else Path(tempfile.gettempdir()) / "data-gym-cache"
    if not (directory / hashlib.sha1(_O200K.encode()).hexdigest()).exists():
        return None
    return tiktoken.get_encoding("o200k_base")


def count(text: str) -> int:
    encoding = _encoding()
    if encoding is not None:
        return len(encoding.encode(text))
    return math.ceil(len(text) / 4)


def estimate(messages: list[dict[str, str]], max_completion_tokens: int) -> int:
    """Tokens to reserve for a chat completion: the prompt, its framing and the longest answer."""
    prompt = sum(count(m["content"]) + MESSAGE_OVERHEAD for m in messages) + REPLY_OVERHEAD
    return prompt + max_completion_tokens
