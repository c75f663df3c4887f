"""Hand many small jobs to the event loop with one wake-up per burst.

``run_coroutine_threadsafe`` costs a self-pipe write, a task and a
cross-thread future for every call; for acks and batched publishes that
overhead was most of the work.  Worker threads append to a deque instead,
and one task on the loop drains it in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections import deque
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

#: Passes through the event loop the drain task waits for new jobs before it goes idle.
LINGER_ROUNDS = 2

Job = Callable[[], Awaitable[object]]


class Outbox:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.jobs: deque[Job] = deque()
        self.lock = threading.Lock()
        self.draining = False
        # The loop is woken through a pipe of our own: os.write lets go of the GIL for the system call,
        # where uvloop's call_soon_threadsafe holds it.  A thread woken at once on this core would
        # otherwise wait for the GIL of the very thread that woke it.
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        loop.call_soon_threadsafe(loop.add_reader, self._wake_read, self._woken)

    def put(self, job: Job) -> None:
        self.jobs.append(job)
        with self.lock:
            if self.draining:
                return
            self.draining = True
        try:
            os.write(self._wake_write, b"\0")
        except BlockingIOError:  # the pipe is full of wake-ups the loop has yet to read: it is woken
            pass
        except OSError:  # closed: the connection is going away
            with self.lock:
                self.draining = False

    def _woken(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_read, 4096)
        self.loop.create_task(self._drain())

    def close(self) -> None:
        """Stop taking jobs; call from the loop's thread, or after the loop has stopped."""
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self._wake_read)
        for fd in (self._wake_read, self._wake_write):
            with contextlib.suppress(OSError):
                os.close(fd)

    async def _drain(self) -> None:
        idle_rounds = 0
        while True:
            if not self.jobs and idle_rounds < LINGER_ROUNDS:
                # Let other loop work run and more jobs arrive before paying
                # for another cross-thread wake-up.
                idle_rounds += 1
                await asyncio.sleep(0)
                continue
            with self.lock:
                if not self.jobs:
                    self.draining = False
                    return
            idle_rounds = 0
            job = self.jobs.popleft()
            try:
                await job()
            except Exception:
                logger.warning("A queued NATS operation failed.", exc_info=True)

    async def flushed(self) -> None:
        """Return once every job put before this call has run."""
        done = self.loop.create_future()

        async def mark() -> None:
            done.set_result(None)

        self.put(mark)
        await done
