"""Notify targets against real local receivers: Apprise's own grammar, the address policy on every hop, deadlines."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline import notify, webhooks
from pipeline.fetcher import Fetcher
from pipeline.jobs import Told
from pipeline.netguard import AddressPolicy
from tests.site import trickling_server


class Receiver:
    """An HTTP server on ``host`` that records every request and answers with ``answer(handler)``."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.status, self.headers = 200, {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append((self.command, self.path, dict(self.headers), body))
                self.send_response(receiver.status)
                for name, value in receiver.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_PUT(self) -> None:
                self.do_POST()

            def do_GET(self) -> None:
                self.do_POST()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.host, self.port = host, self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def allowed() -> Iterator[Receiver]:
    receiver = Receiver("127.0.0.1")
    yield receiver
    receiver.close()


@pytest.fixture
def forbidden() -> Iterator[Receiver]:
    """A loopback address the policy does not allow (only 127.0.0.1 is allow-listed): it must see nothing."""
    receiver = Receiver("127.0.0.2")
    yield receiver
    receiver.close()


@pytest.fixture
def fetcher() -> Iterator[Fetcher]:
    fetcher = Fetcher(AddressPolicy.from_entries(["127.0.0.1"]), timeout=3)
    yield fetcher
    fetcher.close()


FINDING: Told = {"severity": "warning", "summary": "price is 89 (was 120), < 100", "evidence": ["89"]}
JOB = {"source": "monitor:1", "url": "https://user:pw@shop.example/kettle?key=k3y"}


def test_json_urls_follow_apprises_grammar(allowed: Receiver, fetcher: Fetcher) -> None:
    url = f"json://127.0.0.1:{allowed.port}/hook?+X-Token=abc&:message=text&method=PUT"
    outcome = notify.send(url, FINDING, JOB, fetcher)
    assert outcome.ok, outcome
    [(method, path, headers, body)] = allowed.requests
    assert (method, path, headers["X-Token"]) == ("PUT", "/hook", "abc")
    payload = json.loads(body)
    assert "price is 89" in payload["text"] and "message" not in payload
    assert "k3y" not in body.decode() and "pw" not in payload["title"]  # the watched URL's secrets stay home


@pytest.mark.parametrize(
    "template",
    [
        "json://127.0.0.1:{port}/hook",
        "xml://127.0.0.1:{port}/hook",
        "form://127.0.0.1:{port}/hook",
        "gotify://127.0.0.1:{port}/AbCdEfGhIjKlMnO",
        "apprise://127.0.0.1:{port}/mytoken",
    ],
)
def test_no_notifier_follows_a_redirect_past_the_address_policy(
    template: str, allowed: Receiver, forbidden: Receiver, fetcher: Fetcher
) -> None:
    allowed.status, allowed.headers = 307, {"Location": f"http://127.0.0.2:{forbidden.port}/stolen"}
    outcome = notify.send(template.format(port=allowed.port), FINDING, JOB, fetcher)
    assert allowed.requests, "the allowed host was never asked"
    assert forbidden.requests == []
    assert not outcome.ok and not outcome.transient  # a redirect to a refused address is never retried
    assert "non-public address 127.0.0.2" in outcome.error or outcome.status == 307


@pytest.mark.parametrize("scheme", ["json", "xml", "form", "apprise"])
def test_a_notifier_aimed_at_a_refused_address_sends_nothing(
    scheme: str, forbidden: Receiver, fetcher: Fetcher
) -> None:
    outcome = notify.send(f"{scheme}://127.0.0.2:{forbidden.port}/hook", FINDING, JOB, fetcher)
    assert not outcome.ok and not outcome.transient and "non-public" in outcome.error
    assert forbidden.requests == []


@pytest.mark.parametrize(("status", "transient"), [(500, True), (429, True), (404, False), (401, False)])
def test_notifier_failures_are_classified_like_every_call(
    status: int, transient: bool, allowed: Receiver, fetcher: Fetcher
) -> None:
    allowed.status = status
    allowed.headers = {"Retry-After": "2.5"} if status == 429 else {}
    outcome = notify.send(f"json://127.0.0.1:{allowed.port}/hook", FINDING, JOB, fetcher)
    assert (outcome.ok, outcome.status, outcome.transient) == (False, status, transient)
    assert outcome.after == (2.5 if status == 429 else None)
    webhook = webhooks.post(fetcher, f"http://127.0.0.1:{allowed.port}/hook", b"{}", {})
    assert (webhook.ok, webhook.status, webhook.transient, webhook.after) == (False, status, transient, outcome.after)


@pytest.mark.parametrize("kind", ["webhook", "json"])
def test_one_deadline_covers_a_delivery(kind: str, fetcher: Fetcher) -> None:
    started = time.monotonic()
    with trickling_server(0.3) as port:
        if kind == "webhook":
            outcome = webhooks.post(fetcher, f"http://127.0.0.1:{port}/hook", b"{}", {})
        else:
            outcome = notify.send(f"json://127.0.0.1:{port}/hook", FINDING, JOB, fetcher)
    assert not outcome.ok and outcome.transient
    assert time.monotonic() - started < 3 + 2  # the fetcher's 3 s, not a read timeout per header line


def test_the_guard_is_inert_outside_a_delivery(forbidden: Receiver) -> None:
    """Other users of requests in the process (none today) are not subject to the alert's policy."""
    import requests

    assert requests.get(f"http://127.0.0.2:{forbidden.port}/x", timeout=5).status_code == 200
