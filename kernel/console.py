"""What a person at a terminal sees while the job works: a progress display, nothing of it elsewhere.

``SyncProgress`` shows one rich progress bar per source on standard error when it
is a terminal: deals so far, the total where the source knows it (rows of a CSV
file, HubSpot's search ``total``), the rate and the time left. Off a terminal
(cron, containers, pipes) it draws nothing: the logs and the summary lines say
what happened. Log lines written while a bar is showing go above it, so they
never share a line with it.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

__all__ = ["SyncProgress"]


class SyncProgress:
    """A progress display for one source's sync (a no-op off a terminal).

    Use as a context manager; call ``update(seen)`` after each batch and
    ``total(n)`` when the source learns how many deals to expect.
    """

    def __init__(self, source: str, *, total: int | None = None, stream: TextIO | None = None) -> None:
        self.source = source
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self._total = total
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> SyncProgress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            console = Console(file=self.stream, stderr=self.stream is sys.stderr)
            progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TaskProgressColumn(), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                TextColumn("left"), TimeRemainingColumn(), console=console, transient=False,
                redirect_stdout=False, redirect_stderr=False,
            )
            progress.start()
            self._task = progress.add_task(self.source, total=self._total, rate="")
            self._progress = progress
        return self

    def total(self, total: int | None) -> None:
        """Set (or correct) the number of deals expected."""
        self._total = total
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, total=total)

    def update(self, seen: int) -> None:
        """The source's deals so far."""
        if self._progress is None or self._task is None:
            return
        task = self._progress.tasks[0]
        speed = task.speed
        rate = f"{speed:,.0f} deals/s" if speed else ""
        total = self._total if self._total is None or seen <= self._total else seen
        self._progress.update(self._task, completed=seen, total=total, rate=rate)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
