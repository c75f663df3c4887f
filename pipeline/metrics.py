"""The pipeline's Prometheus metrics, defined once.

Base units (seconds, bytes) and bounded labels only: a stage, a queue, an
outcome, a status code, an API key's ``key-<fingerprint>`` label; never a
URL, an id or a secret.  Worker processes write them to the multiprocess
directory (``PROMETHEUS_MULTIPROC_DIR``, set by ``actors``) beside
Dramatiq's own metrics; the exporter or the worker serves them
(:mod:`pipeline.exporter`).  Dramatiq's Prometheus middleware already counts
messages, errors, retries, dead letters (rejects), in-flight messages and
durations per queue; what is here is what it cannot know.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CHECKS = Counter(
    "pipeline_checks",
    "Stage results: fetched, unchanged, superseded, changed, relevant, irrelevant, sent, error",
    ["stage", "outcome"],
)
FETCH_RESPONSES = Counter("pipeline_fetch_responses", "HTTP responses fetch received, by status code", ["code"])
FETCH_ERRORS = Counter(
    "pipeline_fetch_errors",
    "Fetches that failed: blocked, bad_url, connection, timeout, too_large, http_status, retry_later, redirects, "
    "bad_content",
    ["kind"],
)
FETCH_BYTES = Counter("pipeline_fetch_response_bytes", "Bytes of the bodies fetch read")
FETCH_SECONDS = Histogram(
    "pipeline_fetch_duration_seconds",
    "Time from request to the last byte of a fetch",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15),
)
RENDER_SECONDS = Histogram(
    "pipeline_render_duration_seconds",
    "Time to render a page in Chromium: load, wait, DOM and screenshot",
    buckets=(0.25, 0.5, 1, 2, 5, 10, 20, 30, 60),
)
BROWSER_LAUNCHES = Counter(
    "pipeline_render_browser_launches",
    "Chromium browsers started by render workers, by reason: first, recycled (after a number of checks), memory "
    "(above the ceiling), crashed (replaced after it died)",
    ["reason"],
)
BROWSER_MEMORY = Gauge(
    "pipeline_render_browser_memory_bytes",
    "Memory of the render workers' browsers (proportional set size of Chromium's processes), all live workers",
    multiprocess_mode="livesum",
)
ALERTS = Counter(
    "pipeline_alerts",
    "Alert deliveries by channel (webhook, apprise) and outcome (sent, failed)",
    ["channel", "outcome"],
)
EVENTS = Counter(
    "pipeline_events",
    "Events ingested from NATS subjects, by kind and outcome (accepted, invalid)",
    ["kind", "outcome"],
)
CONSUMER_STALLS = Counter(
    "pipeline_consumer_stalls",
    "Times a worker's consumer got no message for 10 s while its queue had messages waiting (or could not be read)",
    ["queue"],
)
WORKER_PROCESSES = Gauge(
    "pipeline_worker_processes", "Worker processes consuming each queue", ["queue"], multiprocess_mode="livesum"
)

LLM_REQUESTS = Counter(
    "pipeline_llm_requests",
    "LLM calls by outcome: ok, rate_limited (a 429), server_error, auth_error, connection_error, bad_request",
    ["key", "model", "outcome"],
)
LLM_TOKENS = Counter("pipeline_llm_tokens", "Tokens the LLM reported using", ["key", "model", "kind"])
LLM_COST = Counter("pipeline_llm_cost_usd", "What the LLM calls cost, by the configured price table", ["key", "model"])
LLM_CACHE = Counter("pipeline_llm_cache", "Verdict cache lookups", ["result"])
for _result in ("hit", "miss"):  # both series exist from the start: a hit ratio is 0, not "no data"
    LLM_CACHE.labels(_result)
RATELIMIT_WAIT = Histogram(
    "pipeline_ratelimit_wait_seconds",
    "How long a call waited for its slot in a shared quota",
    ["limiter"],
    buckets=(0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RATELIMIT_DENIED = Counter(
    "pipeline_ratelimit_denied", "Calls sent back to the queue because a quota was busy for too long", ["limiter"]
)
