"""The pipeline's Prometheus metrics, defined once.

Labels never carry a secret: API keys appear as their ``key-<fingerprint>``
label, hosts as host names.  How they are served is the exporter's job.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

LLM_REQUESTS = Counter(
    "pipeline_llm_requests",
    "LLM calls by outcome: ok, rate_limited (a 429), server_error, auth_error, connection_error, bad_request",
    ["key", "model", "outcome"],
)
LLM_TOKENS = Counter("pipeline_llm_tokens", "Tokens the LLM reported using", ["key", "model", "kind"])
LLM_COST = Counter("pipeline_llm_cost_usd", "What the LLM calls cost, by the configured price table", ["key", "model"])
LLM_CACHE = Counter("pipeline_llm_cache", "Verdict cache lookups", ["result"])
RATELIMIT_WAIT = Histogram(
    "pipeline_ratelimit_wait_seconds",
    "How long a call waited for its slot in a shared quota",
    ["limiter"],
    buckets=(0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RATELIMIT_DENIED = Counter(
    "pipeline_ratelimit_denied", "Calls sent back to the queue because a quota was busy for too long", ["limiter"]
)
