"""The LLM analyser: a monitor's question about a change, answered by an OpenAI-compatible model.

Every call first takes a slot in its key's shared quota
(:class:`~pipeline.ratelimit.Limiter`, requests and tokens per minute), so
all workers together stay under what the provider allows.  Keys form a
pool: the first is the primary, the rest are backups.  A call goes to the
first key with room now; when none has, to the one whose queue is shortest,
which spreads a heavy load over every key.  A key that answers 429 or 5xx
is blocked in the shared quota for as long as the server asked, and the
call moves to the next key; a key refused as unauthorised is set aside.

The SDK's own retries are off: waiting is the limiter's job, and a call no
key can take becomes a Dramatiq retry after the delay the server named.
No key ever appears in an error, a log line or a metric: keys are named by
their ``key-<fingerprint>`` label.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import openai

from pipeline import metrics, redact
from pipeline.content import Change
from pipeline.failures import is_transient_status
from pipeline.llm import prompt, tokens
from pipeline.llm.cache import VerdictCache, cache_key
from pipeline.llm.errors import LLMRejectedError, LLMUnavailableError
from pipeline.llm.headers import QuotaHeaders, retry_after
from pipeline.ratelimit import Limiter, Rate, RateLimitedError, TooLargeError
from pipeline.rules import Verdict
from pipeline.settings import APIKey, LLMSettings

logger = logging.getLogger(__name__)

#: How long a key refused as unauthorised (or out of credit) is asked last, per worker process.
BENCH_SECONDS = 600.0


def quota(settings: LLMSettings) -> dict[str, Rate]:
    period, margin = settings.quota_period, settings.margin
    return {"requests": Rate(settings.rpm, period, margin), "tokens": Rate(settings.tpm, period, margin)}


def _quota_key(key: APIKey) -> str:
    """The key's entry in the shared limiter (the bucket also holds hosts' turns)."""
    return f"llm/{key.label}"


class LLMAnalyser:
    def __init__(
        self,
        settings: LLMSettings,
        limiter: Limiter,
        cache: VerdictCache | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.limiter = limiter
        self.cache = cache
        self.sleep = sleep
        self._benched: dict[str, float] = {}
        self._clients: dict[str, openai.OpenAI] = {}
        for key in settings.keys:
            redact.add_secret(key.secret)
            for outcome in ("ok", "rate_limited"):  # at 0 from the start: no 429s yet is a 0, not "no data"
                metrics.LLM_REQUESTS.labels(key.label, settings.model, outcome)
            self._clients[key.label] = openai.OpenAI(
                api_key=key.secret, base_url=settings.base_url, max_retries=0, timeout=settings.timeout
            )

    @property
    def name(self) -> str:
        """What findings record as their analyser."""
        return f"llm:{self.settings.model}"[:32]

    def judge(self, question: str, change: Change) -> Verdict:
        """The model's verdict on ``change`` for ``question``; from the cache when it was asked before."""
        key = cache_key(self.settings.model, question, prompt.change_text(change, self.settings.max_input_chars))
        if self.cache is not None:
            cached = self.cache.get(key)
            metrics.LLM_CACHE.labels("hit" if cached else "miss").inc()
            if cached is not None:
                return cached
        messages = prompt.messages(question, change, self.settings.max_input_chars)
        costs = {"requests": 1.0, "tokens": float(tokens.estimate(messages, self.settings.max_completion_tokens))}
        verdict = self._call(messages, costs, change)
        if self.cache is not None:
            self.cache.put(key, verdict)
        return verdict

    def _call(self, messages: list[dict[str, str]], costs: dict[str, float], change: Change) -> Verdict:
        tried: list[APIKey] = []
        failures: list[str] = []
        refused: list[APIKey] = []
        after: float | None = None
        while (key := self._take_slot(costs, tried, failures)) is not None:
            tried.append(key)
            try:
                raw = self._clients[key.label].chat.completions.with_raw_response.create(  # type: ignore[call-overload]
                    model=self.settings.model,
                    messages=messages,  # plain dicts: the SDK's TypedDicts are not worth the ceremony here
                    response_format=prompt.SCHEMA,
                    max_completion_tokens=self.settings.max_completion_tokens,
                )
            except openai.APIStatusError as e:
                outcome, wait = self._failed(key, e)
                failures.append(f"{key.label}: HTTP {e.status_code}" + (f" {e.code}" if e.code else ""))
                if outcome == "bad_request":
                    raise LLMRejectedError(f"the LLM refused the request: {failures[-1]}") from None
                if outcome == "auth_error":
                    refused.append(key)
                elif wait is not None:
                    after = max(after or 0.0, wait)
                continue
            except openai.APIConnectionError as e:  # includes timeouts: back off, nobody said how long
                metrics.LLM_REQUESTS.labels(key.label, self.settings.model, "connection_error").inc()
                failures.append(f"{key.label}: {type(e).__name__}")
                continue
            completion = raw.parse()
            self._succeeded(key, raw.headers, costs, completion.usage)
            return prompt.parse_verdict(completion.choices[0].message.content, change)
        if len(refused) == len(self.settings.keys):
            raise LLMRejectedError("every API key was refused: " + "; ".join(failures))
        raise LLMUnavailableError(after, "no LLM key could take the call: " + "; ".join(failures))

    def _take_slot(self, costs: dict[str, float], tried: list[APIKey], failures: list[str]) -> APIKey | None:
        """The key to call next, after waiting for its slot; None when every key has been tried."""
        now = time.monotonic()
        untried = [k for k in self.settings.keys if k not in tried]
        if not untried:
            return None
        # Keys refused lately are asked last, not never: a key that was fixed comes back by itself.
        candidates = sorted(untried, key=lambda k: self._benched.get(k.label, 0.0) > now)
        try:
            denied = []
            for key in candidates:  # the first key with room now, primary first
                decision = self.limiter.decide(_quota_key(key), costs, 0.0)
                if decision.granted:
                    return self._wait(key, decision.wait)
                denied.append((decision.wait, key))
            wait, key = min(denied, key=lambda d: d[0])  # else the shortest queue, if short enough
            if wait <= self.settings.max_wait:
                decision = self.limiter.decide(_quota_key(key), costs, self.settings.max_wait)
                if decision.granted:
                    return self._wait(key, decision.wait)
                wait = decision.wait
        except TooLargeError as e:
            raise LLMRejectedError(f"the prompt is too large for the quota: {e}") from None
        metrics.RATELIMIT_DENIED.labels("llm").inc()
        if tried:  # keys failed on this call: that is a retry, not a wait in line
            raise LLMUnavailableError(wait, "; ".join(failures) + f"; the other keys are busy for {wait:.1f}s")
        # (a denial of the first key asked: the message waits in the stream, no retry used)
        raise RateLimitedError("llm", wait)

    def _wait(self, key: APIKey, seconds: float) -> APIKey:
        metrics.RATELIMIT_WAIT.labels("llm").observe(max(0.0, seconds))
        if seconds > 0:
            self.sleep(seconds)
        return key

    def _failed(self, key: APIKey, error: openai.APIStatusError) -> tuple[str, float | None]:
        """Book a refused call; its outcome and how long the server asked us to wait (None: it did not say)."""
        headers = error.response.headers
        wait = retry_after(headers)
        if error.status_code in (401, 403) or error.code == "insufficient_quota":
            outcome = "auth_error"
            self._benched[key.label] = time.monotonic() + BENCH_SECONDS
        elif error.status_code == 429:
            outcome = "rate_limited"
            wait = 1.0 if wait is None else wait
            quota_headers = QuotaHeaders.parse(headers)
            self.limiter.observe(
                _quota_key(key), remaining=quota_headers.remaining, reset=quota_headers.reset, retry_after=wait
            )
        elif not is_transient_status(error.status_code):  # no retry of the same request can change it
            outcome = "bad_request"
        else:  # 5xx, 408, 409: the server's trouble, another key or a later try may do
            outcome = "server_error"
            if wait is not None:
                self.limiter.observe(_quota_key(key), retry_after=wait)
        metrics.LLM_REQUESTS.labels(key.label, self.settings.model, outcome).inc()
        return outcome, wait

    def _succeeded(self, key: APIKey, headers: object, costs: dict[str, float], usage: object) -> None:
        """Count the call and tell the limiter what it learned; a paid answer is never lost over this."""
        model = self.settings.model
        metrics.LLM_REQUESTS.labels(key.label, model, "ok").inc()
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        metrics.LLM_TOKENS.labels(key.label, model, "prompt").inc(prompt_tokens)
        metrics.LLM_TOKENS.labels(key.label, model, "completion").inc(completion_tokens)
        metrics.LLM_COST.labels(key.label, model).inc(self.settings.cost(prompt_tokens, completion_tokens))
        said = QuotaHeaders.parse(headers)  # type: ignore[arg-type]
        try:
            if said.remaining:
                self.limiter.observe(_quota_key(key), remaining=said.remaining, reset=said.reset)
            self.limiter.charge(_quota_key(key), {"tokens": prompt_tokens + completion_tokens - costs["tokens"]})
        except Exception:
            logger.warning("Could not book %s's usage in the shared quota", key.label, exc_info=True)
