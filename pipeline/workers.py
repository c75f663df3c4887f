"""Worker pools: ``dramatiq actors --queues <queue>`` processes, one pool per queue.

Each stage has its own pool so it can be sized on its own lag, as KEDA
sizes a Deployment per stage on a cluster.  One member of a pool is one
replica: a ``dramatiq`` command with the Deployment's processes and threads.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


class WorkerPool:
    """The worker processes of one queue.

    Shrinking is graceful: a dropped replica gets SIGTERM, finishes the
    messages it is running (up to ``shutdown_timeout``) and hands its
    prefetched ones back to the stream.  Until it has exited it is *draining*:
    no longer counted in :attr:`size`, still waited for by :meth:`stop`.
    """

    def __init__(
        self,
        queue: str,
        *,
        env: dict[str, str],
        log_dir: Path,
        module: str = "actors",
        processes: int = 1,
        threads: int = 8,
        shutdown_timeout: float = 100,
    ) -> None:
        self.queue = queue
        self.env = env
        self.log_dir = log_dir
        self.module = module  # what `dramatiq` imports: the broker and the actors
        self.processes = processes
        self.threads = threads
        self.shutdown_timeout = shutdown_timeout
        self.replicas: list[subprocess.Popen[bytes]] = []
        self.draining: list[subprocess.Popen[bytes]] = []

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{self.queue}.log", "ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "dramatiq", self.module, "--queues", self.queue,
                 "--processes", str(self.processes), "--threads", str(self.threads),
                 "--worker-shutdown-timeout", str(int(self.shutdown_timeout * 1000))],
                env=self.env,
                stdout=log,
                stderr=log,
                start_new_session=True,  # Ctrl-C reaches us; we stop the pool gracefully
            )  # fmt: skip

    @property
    def size(self) -> int:
        """Replicas running and not draining (a replica that died is dropped, and the next resize replaces it)."""
        self.replicas = [p for p in self.replicas if p.poll() is None]
        self.draining = [p for p in self.draining if p.poll() is None]
        return len(self.replicas)

    def resize(self, size: int) -> None:
        """Grow or shrink to ``size`` replicas; the newest go first when shrinking."""
        while self.size < size:
            self.replicas.append(self._spawn())
        while self.size > size:
            replica = self.replicas.pop()
            replica.send_signal(signal.SIGTERM)
            self.draining.append(replica)

    def stop(self) -> None:
        """SIGTERM to every replica, then wait; a replica still busy past its shutdown timeout is killed."""
        self.resize(0)
        for replica in self.draining:
            try:
                replica.wait(self.shutdown_timeout + 10)
            except subprocess.TimeoutExpired:
                os.killpg(replica.pid, signal.SIGKILL)
                replica.wait()
        self.draining.clear()
