"""Worker pools: ``dramatiq actors --queues <queue>`` processes, one pool per queue.

Each stage has its own pool so it can be sized on its own lag, as KEDA
sizes a Deployment per stage on a cluster.  One member of a pool is one
replica: a ``dramatiq`` command with the Deployment's processes and threads.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

#: Linux's prctl(2), resolved in the parent: the child only calls it between fork and exec.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> Callable[[], None] | None:
    """What a replica runs before ``exec``: SIGTERM it when the process that started it dies, however it dies.

    ``pipeline up`` killed with SIGKILL would otherwise leave its workers running beside the next one's
    (they are in sessions of their own, so no terminal signal reaches them).  SIGTERM is Dramatiq's
    graceful stop: running messages finish, prefetched ones go back.  Linux only (``PR_SET_PDEATHSIG``).
    """
    if _PRCTL is None:
        return None
    prctl = _PRCTL

    def die_with_parent() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the line above: nobody would send it
            os._exit(1)

    return die_with_parent


#: The one thread that starts every replica.  Linux sends ``PR_SET_PDEATHSIG``'s signal when the *thread*
#: that forked the child ends, not its process: a replica started from the autoscaler's thread got SIGTERM
#: when that thread ended at a stop, then the pool's own, which Dramatiq takes as "kill now".  This
#: thread lives as long as the process (an idle executor thread waits for work until exit).
_SPAWNER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="replica-spawner")


class WorkerPool:
    """The worker processes of one queue.

    Shrinking is graceful: a dropped replica gets SIGTERM, finishes the
    messages it is running (up to ``shutdown_timeout``) and hands its
    prefetched ones back to the stream.  Until it has exited it is *draining*:
    no longer counted in :attr:`size`, still waited for by :meth:`stop`.

    The autoscaler resizes a pool from its thread while a status line reads
    it from another, so every method holds the pool's lock; once stopped, a
    pool starts nothing more (an autoscaler step finishing late cannot leak
    a replica).
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
        self._replicas: list[subprocess.Popen[bytes]] = []
        self._draining: list[subprocess.Popen[bytes]] = []
        self._lock = threading.RLock()
        self._stopped = False

    def _spawn(self) -> subprocess.Popen[bytes]:
        return _SPAWNER.submit(self._start).result()

    def _start(self) -> subprocess.Popen[bytes]:
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
                preexec_fn=_die_with(os.getpid()),
            )  # fmt: skip

    def _reap(self) -> None:
        """Drop the replicas whose main process has ended, and end what it left behind.

        A ``dramatiq`` main process ends after its worker processes, unless it was killed: then they
        run on, orphaned, beside the replica that replaces it and past the pool's stop.  They are in
        its process group (its session), so they are killed with it; their messages are redelivered,
        as a crashed worker's are.  After a normal exit the group is empty.
        """
        for ended in [p for p in (*self._replicas, *self._draining) if p.poll() is not None]:
            if ended in self._replicas:  # not told to stop: a crash, a kill, the OOM killer; say so where `up` runs
                logger.warning("%s: a worker process (pid %d) ended with code %s; it is replaced; see %s",
                               self.queue, ended.pid, ended.returncode, self.log_dir / f"{self.queue}.log")  # fmt: skip
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(ended.pid, signal.SIGKILL)
        self._replicas = [p for p in self._replicas if p.returncode is None]
        self._draining = [p for p in self._draining if p.returncode is None]

    @property
    def size(self) -> int:
        """Replicas running and not draining (a replica that died is dropped, and the next resize replaces it)."""
        with self._lock:
            self._reap()
            return len(self._replicas)

    @property
    def draining(self) -> int:
        """Replicas told to stop that are still finishing their messages."""
        with self._lock:
            self._reap()
            return len(self._draining)

    def resize(self, size: int) -> None:
        """Grow or shrink to ``size`` replicas; the newest go first when shrinking."""
        with self._lock:
            self._reap()
            while not self._stopped and len(self._replicas) < size:
                self._replicas.append(self._spawn())
            while len(self._replicas) > size:
                replica = self._replicas.pop()
                replica.send_signal(signal.SIGTERM)
                self._draining.append(replica)

    def stop(self) -> None:
        """SIGTERM to every replica, then wait; a replica still busy past its shutdown timeout is killed."""
        with self._lock:
            self._stopped = True
            self.resize(0)
            draining, self._draining = self._draining, []
        for replica in draining:
            try:
                replica.wait(self.shutdown_timeout + 10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(replica.pid, signal.SIGKILL)
                replica.wait()
