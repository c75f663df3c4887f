"""Hand many small jobs to the event loop with one wake-up per burst.

``run_coroutine_threadsafe`` costs a self-pipe write, a task and a
cross-thread future for every call; for acks and batched publishes that
overhead was most of the work.  Worker threads append to a deque instead,
and one task on the loop drains it in order.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable

from pipeline.broker.loop import Wakeup

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
        self._wakeup = Wakeup(loop, self._start)

    def put(self, job: Job) -> None:
        self.jobs.append(job)
        with self.lock:
            if self.draining:
                return
            self.draining = True
        try:
            self._wakeup()
        except OSError:  # closed: the connection is going away
            with self.lock:
                self.draining = False

    def _start(self) -> None:
        self.loop.create_task(self._drain())

    def close(self) -> None:
        """Stop taking jobs; from the loop's thread, or once the loop has stopped."""
        self._wakeup.close()

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
