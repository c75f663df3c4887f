"""What ``pipeline up`` shows while it runs: a live table on a terminal, status lines anywhere else.

On a terminal (rich, which typer brings) the stages stand in flow order with
their lag, replicas, messages done per second and errors, redrawn in place,
and alerts are printed above the table as they are sent, so none scrolls
away.  Piped or logged, the same figures come as one plain line per
interval, which is what a log shipper or a test reads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from pipeline.supervisor import StageStatus


class StatusView:
    """``update(stages)`` every interval; ``alert(line)`` whenever an alert is shown."""

    def __init__(self, interval: float, console: Console | None = None) -> None:
        self.interval = interval
        self.console = console or Console()
        self._live: Live | None = None
        self._streams: list[tuple[logging.StreamHandler[Any], Any]] = []

    def __enter__(self) -> StatusView:
        if self.console.is_terminal:
            self._live = Live(console=self.console, auto_refresh=False, redirect_stdout=False, redirect_stderr=False)
            self._live.__enter__()
            # Log lines written straight to the terminal would tear the table: they go above it too.
            for handler in logging.getLogger().handlers:
                if isinstance(handler, logging.StreamHandler):
                    self._streams.append((handler, handler.setStream(_Above(self))))
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        for handler, stream in self._streams:
            handler.setStream(stream)
        self._streams.clear()
        if self._live is not None:
            self._live.__exit__(kind, error, tb)

    def update(self, stages: Sequence[StageStatus], problem: str | None = None) -> None:
        """Show the stages; ``problem`` (NATS unreachable since ...) stands above them while there is one."""
        if self._live is None:
            line = _line(stages) or "no queues declared in actors/"
            typer.echo(time.strftime("%H:%M:%S ") + (f"{problem}; " if problem else "") + line)
            return
        self._live.update(self._table(stages, problem), refresh=True)

    def alert(self, line: str) -> None:
        if self._live is None:
            typer.echo(line)
        else:
            self._live.console.print(line, markup=False, highlight=False)  # above the live table

    def _table(self, stages: Sequence[StageStatus], problem: str | None) -> Table:
        table = Table(
            title=problem,
            title_style="bold red",
            caption=time.strftime("%H:%M:%S; Ctrl-C stops"),
            caption_justify="left",
        )
        for column in ("stage", "lag", "replicas", "done/s", "errors"):
            table.add_column(column, justify="left" if column in ("stage", "errors") else "right")
        for s in stages:
            replicas = f"{s.replicas}" + (f" (+{s.draining} draining)" if s.draining else "")
            errors = f"{s.errors}: pipeline dlq list --queue {s.queue}" if s.errors else "0"
            lag = "?" if s.lag is None else str(s.lag)
            table.add_row(s.queue, lag, replicas, f"{s.done / self.interval:.1f}", errors)
        return table


class _Above:
    """A stream for log handlers: each line is printed above the live table."""

    def __init__(self, view: StatusView) -> None:
        self.view = view

    def write(self, text: str) -> int:
        if text.strip():
            self.view.alert(text.rstrip("\n"))
        return len(text)

    def flush(self) -> None:
        pass


def _line(stages: Sequence[StageStatus]) -> str:
    return "  ".join(
        f"{s.queue}: lag {'?' if s.lag is None else s.lag} done {s.done}{f' errors {s.errors}' if s.errors else ''}"
        f" replicas {s.replicas}{f' ({s.draining} draining)' if s.draining else ''}"
        for s in stages
    )
