"""changedetection.io as a benchmark peer: its checks per second and CPU per check on our local pages.

    python bench/peers/changedetection.py                  # 1000 pages, 10 fetch workers
    python bench/peers/changedetection.py --pages 200 --workers 20 --realtime-ui

changedetection.io is installed once into a venv of its own (its pins clash with ours), by default
``~/.cache/nats-ai-pipeline/bench/changedetection-venv``, and runs as a subprocess: its own web server,
API and fetch workers, as deployed, on a fresh datastore in a temporary directory.  Each watch uses its
plain HTTP fetcher (``html_requests``) and a ``.price`` CSS filter.  Set for the bench:
``ALLOW_IANA_RESTRICTED_ADDRESSES=true`` (else it refuses to fetch 127.0.0.1), ``DISABLE_VERSION_CHECK``
(no call home), no notification URL (so no notification), log level WARNING (its default, DEBUG,
writes lines per check), and its realtime UI (Socket.IO pushes to browsers) off unless asked for.

How a round is measured.  The server starts with every watch globally paused (``-P true``): the
global pause stops only its scheduler ("ticker") from queueing due watches, while an explicit
recheck still goes through the same queue and fetch workers.  So adding watches queues nothing, and
every round, the first included, starts the same way: ``GET /api/v1/watch?recheck_all=1`` queues
every watch, and the round is over when the queue is empty, no worker is busy, and every watch's
``last_checked`` is after the trigger.  Round 1 is thus "the first check of every page", timed from
the trigger, not from the adds (which would time our API calls too); round 2 comes after every
price changed, round 3 after nothing did.  ``cpu_seconds`` is the CPU of the changedetection.io
process and its children over the round, read from /proc; it includes serving our polling (two
small requests every 0.25 s), which is kept light rather than subtracted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

# bench/, as for the scripts in it (run as scripts, they have it first on the path): pages.py is there.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
from pages import Pages

VERSION = "0.60.10"
# The newest datastore schema in VERSION (the last update_N in its store/updates.py).  A datastore we
# seed at this schema is loaded as is; a fresh one would get two demo watches on public sites.
SCHEMA_VERSION = 33
VENV = Path.home() / ".cache" / "nats-ai-pipeline" / "bench" / "changedetection-venv"
POLL = 0.25  # seconds between progress polls
IMPORT_BATCH = 19  # URLs per import request: the most it adds synchronously, answering the uuids


@dataclass(frozen=True)
class Round:
    """One round: every watch rechecked once."""

    checks: int  # watches checked in the round
    seconds: float  # wall time from the trigger until the last check was done
    cpu_seconds: float  # user + system CPU of the changedetection.io process tree over the round
    changed: int  # watches whose newest snapshot is a change made in this round


def install(venv: Path = VENV) -> Path:
    """changedetection.py in ``venv``, installing changedetection.io VERSION there first unless it already is."""
    script = venv / "bin" / "changedetection.py"
    if script.exists() and list(venv.glob(f"lib/python*/site-packages/changedetection_io-{VERSION}.dist-info")):
        return script
    print(f"installing changedetection.io {VERSION} into {venv} (once; a few minutes)", flush=True)
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    command = [python, "-m", "pip", "install", "--progress-bar", "off", f"changedetection.io=={VERSION}"]
    pip = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert pip.stdout is not None
    output = []
    for line in pip.stdout:
        output.append(line)
        # pip's own lines as progress: its direct dependencies (no "->" chain), then installing, done.
        if line.startswith(("Collecting ", "Installing collected", "Successfully installed")) and "->" not in line:
            print(f"  {line.rstrip()[:110]}", flush=True)
    if pip.wait() != 0:
        sys.stderr.write("".join(output[-40:]))
        raise RuntimeError(f"pip install changedetection.io=={VERSION} failed")
    print(f"installed changedetection.io {VERSION} in {time.monotonic() - started:.0f} s", flush=True)
    return script


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its descendants, those still running and those it has reaped."""
    ticks = os.sysconf("SC_CLK_TCK")
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    # Fields after the ")" that closes the command name (which may hold spaces):
                    # [1] ppid, [11] utime, [12] stime, [13] cutime, [14] cstime.
                    stats[int(entry)] = f.read().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                pass  # exited while we looked
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        if p in stats:
            # cutime/cstime hold only children already reaped, so no live child is counted twice.
            total += sum(int(v) for v in stats[p][11:15])
            todo.extend(child for child, fields in stats.items() if int(fields[1]) == p)
    return total / ticks


def _trigger_time() -> float:
    """Wait for a moment fit to trigger a round at, and return it: past a half second, none checked since.

    changedetection.io stamps ``last_checked`` (and a snapshot's time) with the check's start time
    rounded to the whole second.  With the trigger at k + 0.5..k + 1, a check started after it is
    stamped k + 1 or later, and one started before k + 0.5 (all of the previous round's: they started
    before this call) k or earlier, so "stamp > trigger" means "started after the trigger", exactly.
    """
    quiet = time.time()  # every earlier check started before this
    while True:
        now = time.time()
        half = math.floor(now - 0.5) + 0.5  # the latest k + 0.5 up to now
        if 0.01 < now - half < 0.5 and half >= quiet:
            return now
        time.sleep(half + 1.02 - now)  # just past the next k + 0.5


class ChangeDetection:
    """changedetection.io serving on 127.0.0.1 while in ``with``, on a datastore in a temporary directory."""

    def __init__(
        self, *, workers: int = 10, realtime_ui: bool = False, venv: Path = VENV, log_level: str = "WARNING"
    ) -> None:
        self.workers = workers  # FETCH_WORKERS, 10 by default as in changedetection.io itself
        self.realtime_ui = realtime_ui  # its default is on; off here: a UI push our pipeline has no match for
        self.venv = venv
        self.log_level = log_level  # its default is DEBUG: lines per check, written to a file here
        self.api_key = secrets.token_hex(16)
        self.uuids: list[str] = []
        self.url = ""
        self._home: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._http: httpx.Client | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None, "not started"
        return self._process.pid

    @property
    def http(self) -> httpx.Client:
        assert self._http is not None, "not started"
        return self._http

    def __enter__(self) -> ChangeDetection:
        script = install(self.venv)
        self._home = Path(tempfile.mkdtemp(prefix="bench-changedetection-"))
        datastore = self._home / "datastore"
        datastore.mkdir()
        # Seeded settings: our API key; a schema already current, so no demo watches are added; and its
        # realtime UI (Socket.IO) as chosen: on, every watch update is rendered for browsers ("3 seconds
        # ago", through the timeago package) even with none connected: a tenth of a check's CPU, profiled.
        settings = {
            "api_access_token": self.api_key,
            "api_access_token_enabled": True,
            "schema_version": SCHEMA_VERSION,
            "ui": {"socket_io_enabled": self.realtime_ui},  # read with .get() and defaults: the rest may go
        }
        (datastore / "changedetection.json").write_text(json.dumps({"settings": {"application": settings}}))
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = dict(
            os.environ,
            FETCH_WORKERS=str(self.workers),
            ALLOW_IANA_RESTRICTED_ADDRESSES="true",  # the pages are on 127.0.0.1, which it refuses by default
            DISABLE_VERSION_CHECK="true",  # no call home to changedetection.io
        )
        command = [str(self.venv / "bin" / "python"), str(script), "-d", str(datastore), "-h", "127.0.0.1"]
        command += ["-p", str(port), "-l", self.log_level, "-P", "true"]  # -P: see the module docstring
        with open(self._home / "changedetection.log", "wb") as log:
            self._process = subprocess.Popen(command, env=env, cwd=self._home, stdout=log, stderr=subprocess.STDOUT)
        self._http = httpx.Client(base_url=self.url, headers={"x-api-key": self.api_key}, timeout=60)
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"changedetection.io exited with {self._process.returncode}:\n{self.log_tail()}")
            try:
                info = self.http.get("/api/v1/systeminfo")
                if info.status_code == 200:
                    body = info.json()
                    if body["version"] != VERSION or not body["all_paused"] or body["watch_count"]:
                        raise RuntimeError(f"changedetection.io did not start as set up: {body}")
                    return
            except httpx.TransportError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise TimeoutError(f"changedetection.io not answering after {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self, lines: int = 30) -> str:
        if self._home is None or not (self._home / "changedetection.log").exists():
            return ""
        return "\n".join((self._home / "changedetection.log").read_text(errors="replace").splitlines()[-lines:])

    def add(self, urls: list[str], *, selector: str = ".price") -> list[str]:
        """One watch per URL, filtered to ``selector``, through its REST API; their uuids (also kept in ``uuids``).

        ``POST /api/v1/import`` with 19 URLs at a time: below 20 it adds them while we wait and answers
        their uuids (from 20 on, in the background and without).  ``POST /api/v1/watch`` does one watch
        per request at about 25 ms of its CPU each (it validates every request against its OpenAPI
        spec): 1000 took 26 s, against 2 s this way, for the same watches.
        """
        options = {"include_filters": json.dumps([selector]), "fetch_backend": "html_requests", "dedupe": "false"}
        added: list[str] = []
        for i in range(0, len(urls), IMPORT_BATCH):
            batch = urls[i : i + IMPORT_BATCH]
            response = self.http.post(
                "/api/v1/import", params=options, content="\n".join(batch), headers={"Content-Type": "text/plain"}
            )
            uuids = response.json() if response.status_code == 200 else None
            if not (isinstance(uuids, list) and len(uuids) == len(batch) and all(uuids)):
                raise RuntimeError(f"adding {batch[0]} and on: {response.status_code} {response.text[:300]}")
            added += uuids
        self.uuids += added
        return added

    def watches(self) -> dict[str, dict[str, Any]]:
        """Every watch's state from the list API: uuid -> last_checked, last_changed, last_error, ..."""
        response = self.http.get("/api/v1/watch")
        response.raise_for_status()
        listed: dict[str, dict[str, Any]] = response.json()
        return listed

    def _idle(self) -> bool:
        """Nothing queued and no fetch worker busy (two small requests, no walk over the watches)."""
        queued = self.http.get("/queue-status", params={"summary": "1"}).json()["queue_summary"]["total_items"]
        running = self.http.get("/worker-health").json()["worker_status"]["running_uuids"]
        return queued == 0 and not running

    def check_all(self, timeout: float = 600) -> Round:
        """Recheck every watch now and wait for all of them (see the module docstring for what is timed)."""
        trigger = _trigger_time()
        cpu_before = tree_cpu_seconds(self.pid)
        started = time.perf_counter()
        # recheck_all queues every unpaused watch (in a background thread when there are 20 or more).
        self.http.get("/api/v1/watch", params={"recheck_all": "1"}).raise_for_status()
        while True:
            time.sleep(POLL)
            now = time.perf_counter()
            if self._idle():
                # Idle might also be "not queued yet": done only once every watch started after the trigger.
                watches = self.watches()
                if all(watches[uuid]["last_checked"] > trigger for uuid in self.uuids):
                    break
            if now - started > timeout:
                raise TimeoutError(f"changedetection.io: round not done after {timeout:.0f} s")
        cpu = tree_cpu_seconds(self.pid) - cpu_before
        failed = [w["last_error"] for w in (watches[uuid] for uuid in self.uuids) if w.get("last_error")]
        if failed:
            print(f"changedetection.io: {len(failed)} checks failed, e.g. {failed[0]}", file=sys.stderr)
        changed = sum(1 for uuid in self.uuids if (watches[uuid]["last_changed"] or 0) > trigger)
        return Round(checks=len(self.uuids), seconds=now - started, cpu_seconds=cpu, changed=changed)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
        if self._process is not None:
            self._process.terminate()  # SIGTERM: its own fast shutdown
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self._home is not None:
            shutil.rmtree(self._home, ignore_errors=True)
            self._home = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=10, help="FETCH_WORKERS (changedetection.io's default: 10)")
    parser.add_argument("--realtime-ui", action="store_true", help="leave its Socket.IO UI updates on (its default)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed for one round")
    args = parser.parse_args()

    with Pages(args.pages) as pages, ChangeDetection(workers=args.workers, realtime_ui=args.realtime_ui) as cd:
        started = time.perf_counter()
        cd.add(pages.urls)
        print(f"changedetection.io {VERSION}: {args.pages} watches added in {time.perf_counter() - started:.1f} s")
        rounds = []
        for name in ("1 first check", "2 all changed", "3 none changed"):
            if name.startswith("2"):
                pages.round += 1  # every price moves
            gets = pages.gets
            result = cd.check_all(args.timeout)
            if pages.gets - gets != result.checks:
                print(f"round {name}: {pages.gets - gets} pages served for {result.checks} checks", file=sys.stderr)
            rounds.append((name, result))
            print(f"round {name}: {result}", flush=True)

    ui = "on" if args.realtime_ui else "off"
    print(f"\nchangedetection.io {VERSION}, {args.pages} pages, FETCH_WORKERS={args.workers}, realtime UI {ui}\n")
    print("| round | checks | seconds | checks/s | CPU ms per check | changed |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r in rounds:
        per_check = 1000 * r.cpu_seconds / r.checks
        print(f"| {name} | {r.checks} | {r.seconds:.1f} | {r.checks / r.seconds:.1f} | {per_check:.1f} | {r.changed} |")


if __name__ == "__main__":
    main()
