"""A private asyncio event loop in a daemon thread.

Dramatiq's workers are threads and nats.py is asyncio.  Every NATS call
the broker makes is a coroutine submitted to this one loop; the calling
thread blocks on the result (``run``) or does not wait at all (``spawn``).
One loop per broker keeps all of nats.py on the thread that owns it, which
is what nats.py requires.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed: it roughly halves the loop's share of a worker's CPU."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class EventLoopThread:
    def __init__(self, name: str = "jetstream-loop") -> None:
        self.loop = new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        # Let cancelled tasks unwind before the loop is closed.
        pending = asyncio.all_tasks(self.loop)
        for task in pending:
            task.cancel()
        if pending:
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()

    @property
    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def spawn(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Schedule ``coro`` on the loop and return a thread-safe future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and block the calling thread for its result."""
        if self.in_loop_thread:
            raise RuntimeError("EventLoopThread.run() called from its own loop; that would deadlock")
        return self.spawn(coro).result(timeout)

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        if not self.in_loop_thread:
            self._thread.join(timeout=10)


class Wakeup:
    """Run ``callback`` on ``loop`` soon, asked from any thread: ``call_soon_threadsafe`` for one callback.

    Through a pipe of its own, written with ``os.write``, which lets go of the GIL for the system call.
    uvloop's ``call_soon_threadsafe`` holds it there; on a busy machine the kernel often runs the woken
    loop thread at once, which then waits for the GIL of the thread that woke it.  Measured as the
    outbox's wake-up (bench/checks.py, six alternating runs): first checks 257 -> 303 per second.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], object]) -> None:
        self.loop = loop
        self.callback = callback
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        loop.call_soon_threadsafe(loop.add_reader, self._read, self._woken)

    def __call__(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a full pipe: the loop has wake-ups yet to read
            os.write(self._write, b"\0")

    def _woken(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._read, 4096)
        self.callback()

    def close(self) -> None:
        """Close the pipe; from the loop's thread, or once the loop has stopped."""
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self._read)
        for fd in (self._read, self._write):
            with contextlib.suppress(OSError):
                os.close(fd)
