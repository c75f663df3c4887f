"""A loop that runs in a daemon thread of ``pipeline up`` until it is stopped."""

from __future__ import annotations

import threading


class BackgroundService:
    """Subclasses implement ``run()``, looping until ``stop_event`` is set."""

    def __init__(self) -> None:
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None

    def run(self) -> None:
        raise NotImplementedError

    def start(self) -> threading.Thread:
        self.thread = threading.Thread(target=self.run, name=type(self).__name__.lower(), daemon=True)
        self.thread.start()
        return self.thread

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(timeout)
