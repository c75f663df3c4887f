"""A local OpenAI-compatible server for tests and benchmarks: ``POST /v1/chat/completions``.

It speaks the real HTTP API the ``openai`` SDK talks to (HTTP/1.1, keep-alive,
bearer keys, ``json_schema`` response formats, ``usage``), enforces quotas
the way OpenAI documents them and answers with the same headers:

- per key, a token bucket for requests and one for tokens (capacity = the
  limit, refilled at limit/period); a request is charged up front with
  ``ceil(characters / 4) + max_completion_tokens`` tokens;
- ``x-ratelimit-limit-*``, ``x-ratelimit-remaining-*`` and
  ``x-ratelimit-reset-*`` on every answer; a 429 with ``Retry-After`` (and
  ``retry-after-ms``) when a bucket is short, charging nothing;
- faults on demand: ``fail(status, times, retry_after)`` answers the next
  requests with that status, ``delay`` makes every answer slow.

The "model" is a keyword matcher: the verdict is relevant when a word of
the question (four letters or more) appears in a line the change added
inside the fenced page text; ``answer`` replaces it for one test.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_FENCE = re.compile(r"<<<(PAGE-[0-9a-f]+)>>>\n(.*?)\n<<<\1>>>", re.DOTALL)
_QUESTION = re.compile(r"^Question: (.*)$", re.MULTILINE)


def duration(seconds: float) -> str:
    """OpenAI's reset format: ``1s``, ``6m0s``, ``20ms``."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:.0f}s" if minutes else f"{rest:.3g}s"


@dataclass
class Bucket:
    limit: float
    period: float
    level: float = -1.0
    updated: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.level = self.limit

    def refill(self, now: float) -> None:
        self.level = min(self.limit, self.level + (now - self.updated) * self.limit / self.period)
        self.updated = now

    def wait_for(self, amount: float) -> float:
        return max(0.0, (amount - self.level) * self.period / self.limit)

    def reset(self) -> float:
        return (self.limit - self.level) * self.period / self.limit


@dataclass
class KeyAccount:
    requests: Bucket
    tokens: Bucket


def keyword_verdict(question: str, page: str) -> dict[str, Any]:
    words = {w.lower() for w in re.findall(r"[A-Za-z]{4,}", question)}
    added = [line[2:] for line in page.splitlines() if line.startswith("+ ")]
    hits = [line for line in added if words & {w.lower() for w in re.findall(r"[A-Za-z]{4,}", line)}]
    if hits:
        return {
            "relevant": True,
            "severity": "warning",
            "summary": f"{len(hits)} added line(s) match",
            "evidence": hits,
        }
    return {"relevant": False, "severity": "info", "summary": "nothing about the question", "evidence": []}


class OpenAIServer:
    def __init__(
        self,
        keys: list[str],
        *,
        rpm: float = 10_000,
        tpm: float = 10_000_000,
        period: float = 60.0,
        enforce: bool = True,
    ) -> None:
        self.accounts = {key: KeyAccount(Bucket(rpm, period), Bucket(tpm, period)) for key in keys}
        self.enforce = enforce
        self.delay = 0.0
        self.answer: Callable[[str, str], dict[str, Any] | str] = keyword_verdict
        self.lock = threading.Lock()
        self.faults: list[tuple[int, float | None]] = []
        #: (monotonic time, key, status, tokens charged) of every request.
        self.log: list[tuple[float, str, int, int]] = []
        self.bodies: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                status, headers, payload = server.handle(self.path, self.headers.get("Authorization", ""), body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                for name, value in {**headers, "Content-Type": "application/json"}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def fail(self, status: int, times: int = 1, retry_after: float | None = None) -> None:
        with self.lock:
            self.faults.extend([(status, retry_after)] * times)

    def count(self, status: int) -> int:
        return sum(1 for entry in self.log if entry[2] == status)

    def __enter__(self) -> OpenAIServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- the API ---------------------------------------------------------

    def handle(self, path: str, authorization: str, body: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
        if path != "/v1/chat/completions":
            return 404, {}, _error("not found", "invalid_request_error", None)
        key = authorization.removeprefix("Bearer ")
        account = self.accounts.get(key)
        if account is None:
            with self.lock:
                self.log.append((time.monotonic(), key, 401, 0))
            # Like OpenAI, the message names the key: callers must never pass it on.
            return 401, {}, _error(f"Incorrect API key provided: {key}.", "invalid_request_error", "invalid_api_key")
        if self.delay:
            time.sleep(self.delay)
        text = "".join(str(m.get("content", "")) for m in body.get("messages", []))
        charge = math.ceil(len(text) / 4) + int(body.get("max_completion_tokens") or 0)
        with self.lock:
            now = time.monotonic()
            if self.faults:
                status, retry_after = self.faults.pop(0)
                self.log.append((now, key, status, 0))
                headers = {} if retry_after is None else {"retry-after": f"{retry_after:g}"}
                return status, headers, _error(f"injected {status}", "server_error", None)
            account.requests.refill(now)
            account.tokens.refill(now)
            wait = max(account.requests.wait_for(1), account.tokens.wait_for(charge))
            if wait > 0 and self.enforce:
                self.log.append((now, key, 429, 0))
                headers = {**self._limits(account), "retry-after": str(math.ceil(wait))}
                headers["retry-after-ms"] = str(math.ceil(wait * 1000))
                return 429, headers, _error("Rate limit reached", "requests", "rate_limit_exceeded")
            account.requests.level -= 1
            account.tokens.level -= charge
            self.log.append((now, key, 200, charge))
            self.bodies.append(body)
            headers = self._limits(account)
        return 200, headers, self._completion(body, text)

    def _limits(self, account: KeyAccount) -> dict[str, str]:
        headers = {}
        for name, bucket in (("requests", account.requests), ("tokens", account.tokens)):
            headers[f"x-ratelimit-limit-{name}"] = f"{bucket.limit:g}"
            headers[f"x-ratelimit-remaining-{name}"] = str(max(0, math.floor(bucket.level)))
            headers[f"x-ratelimit-reset-{name}"] = duration(bucket.reset())
        return headers

    def _completion(self, body: dict[str, Any], text: str) -> dict[str, Any]:
        prompt = "\n".join(str(m.get("content", "")) for m in body.get("messages", []) if m.get("role") == "user")
        fence = _FENCE.search(prompt)
        question = _QUESTION.search(prompt)
        answer = self.answer(question.group(1) if question else "", fence.group(2) if fence else "")
        content = answer if isinstance(answer, str) else json.dumps(answer)
        prompt_tokens = len(re.findall(r"\w+|[^\w\s]", text))
        completion_tokens = len(re.findall(r"\w+|[^\w\s]", content))
        return {
            "id": "chatcmpl-" + uuid.uuid4().hex,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", ""),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


def _error(message: str, kind: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}
