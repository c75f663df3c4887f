"""``pipeline up --demo``: a local site whose pages change, monitors on it, and an inbox for alerts.

No internet and no API key: the pages are served from this process on
loopback (allowed for the fetcher through ``PIPELINE_FETCH_ALLOW_HOSTS``),
and alerts are delivered as signed webhooks to the site's own ``/inbox``,
which prints them.  A newcomer sees the first alert within seconds and the
next ones as the pages change.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from pipeline.models import Monitor

#: Seconds between page changes.
PERIOD = 20

PRICES = [95, 120, 89, 130, 99, 140]
STATUSES = ["All systems operational", "Degraded performance in eu-west", "All systems operational", "Major outage"]


def _page(title: str, body: str) -> bytes:
    return f"<html><head><title>{title}</title></head><body><main>{body}</main></body></html>".encode()


class DemoSite:
    def __init__(self, on_alert: Callable[[dict[str, str], bytes], None]) -> None:
        self.started = time.monotonic()
        self.on_alert = on_alert
        site = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                body = site.page(self.path)
                self.send_response(200 if body is not None else 404)
                body = body or b"not found"
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                data = self.rfile.read(min(int(self.headers.get("Content-Length", 0)), 1 << 20))
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()
                if self.path == "/inbox":
                    site.on_alert(dict(self.headers), data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def tick(self) -> int:
        return int((time.monotonic() - self.started) // PERIOD)

    def page(self, path: str) -> bytes | None:
        tick = self.tick()
        if path == "/kettle":
            price = PRICES[tick % len(PRICES)]
            return _page("Blue kettle", f"<h1>Blue kettle</h1><p class='price'>Price: {price}.00 EUR</p>")
        if path == "/status":
            return _page("Status", f"<h1>Service status</h1><p id='state'>{STATUSES[tick % len(STATUSES)]}</p>")
        if path == "/changelog":
            entries = "".join(f"<li>Release 1.{n}: fixes and improvements</li>" for n in range(tick + 1, 0, -1))
            return _page("Changelog", f"<h1>Changelog</h1><ul id='log'>{entries}</ul>")
        return None

    def start(self) -> None:
        threading.Thread(target=self.server.serve_forever, args=(0.2,), daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def monitors(self) -> list[Monitor]:
        inbox = [f"{self.url}/inbox"]
        return [
            Monitor(name="demo: kettle under 100 EUR", url=f"{self.url}/kettle", selector=".price",
                    rule="price < 100", interval_seconds=30, notify=inbox),
            Monitor(name="demo: status page degraded", url=f"{self.url}/status", selector="#state",
                    rule="/degraded|outage/i", interval_seconds=30, notify=inbox),
            Monitor(name="demo: changelog", url=f"{self.url}/changelog", selector="#log li",
                    interval_seconds=30, notify=inbox),
        ]  # fmt: skip


def install_monitors(engine: Engine, site: DemoSite) -> list[int]:
    """Point the previous run's demo monitors (their site had another port) at this run's site.

    They keep their ids, so ``monitor show 1`` shows the kettle on every run; a demo monitor that is
    missing (a first run, or one removed) is added.
    """
    with Session(engine) as session:
        previous = {m.name: m for m in session.exec(select(Monitor).where(col(Monitor.name).startswith("demo: ")))}
        monitors = []
        for wanted in site.monitors():
            monitor = previous.pop(wanted.name, None) or wanted
            for field in ("url", "selector", "rule", "interval_seconds", "notify", "next_check_at"):
                setattr(monitor, field, getattr(wanted, field))
            monitor.paused = False
            session.add(monitor)
            monitors.append(monitor)
        for stale in previous.values():
            session.delete(stale)
        session.commit()
        return [m.id for m in monitors]  # type: ignore[misc]
