"""Worker pools: ``dramatiq actors --queues <queue>`` processes, one pool per queue.

Each stage has its own pool so it can be sized on its own lag, as KEDA
sizes a Deployment per stage on a cluster.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


class WorkerPool:
    """The worker processes of one queue."""

    def __init__(
        self, queue: str, *, env: dict[str, str], threads: int = 8, log_dir: Path, module: str = "actors"
    ) -> None:
        self.queue = queue
        self.env = env
        self.threads = threads
        self.log_dir = log_dir
        self.module = module  # what `dramatiq` imports: the broker and the actors
        self.processes: list[subprocess.Popen[bytes]] = []

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{self.queue}.log", "ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "dramatiq", self.module, "--queues", self.queue,
                 "--processes", "1", "--threads", str(self.threads)],
                env=self.env,
                stdout=log,
                stderr=log,
                start_new_session=True,  # Ctrl-C reaches us; we stop the pool gracefully
            )  # fmt: skip

    @property
    def size(self) -> int:
        self.processes = [p for p in self.processes if p.poll() is None]
        return len(self.processes)

    def resize(self, size: int) -> None:
        """Grow or shrink to ``size`` processes; a removed process gets SIGTERM and finishes its work."""
        while self.size < size:
            self.processes.append(self._spawn())
        while self.size > size:
            process = self.processes.pop()
            process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 60) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        self.processes.clear()
