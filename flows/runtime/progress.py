"""Progress of a long command (`make benchmark`, `make ablation`, `make families`,
`make bench-perf`): one bar with what is running, done/total, elapsed time and an ETA.

The commands run for 10-40 minutes on a 2-core machine and their Prefect, Ray and MLflow log
lines scroll past; the bar stays at the bottom of a terminal (rich redirects this process's
prints above it). Where the output is not a terminal (CI, `| tee`), rich draws no bar and each
finished step prints one line instead, so a log still shows how far the command got.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class Steps:
    """The steps of one command: `start(label)` when a step begins, `done(label)` when it ends
    (from any thread: a benchmark runs its cases in a thread pool)."""

    def __init__(self, progress: Progress, title: str, total: int) -> None:
        self._progress = progress
        self._title = title
        self._task = progress.add_task(title, total=total)
        self._running: dict[str, float] = {}
        self._lock = threading.Lock()

    @property
    def running(self) -> list[str]:
        return list(self._running)

    @property
    def completed(self) -> int:
        return int(self._progress.tasks[self._task].completed)

    def _describe(self) -> None:
        running = ", ".join(self._running) or "-"
        self._progress.update(self._task, description=f"{self._title}: {running}")

    def start(self, label: str) -> None:
        with self._lock:
            self._running[label] = time.perf_counter()
            self._describe()

    def done(self, label: str, note: str = "") -> None:
        with self._lock:
            seconds = time.perf_counter() - self._running.pop(label, time.perf_counter())
            self._progress.advance(self._task)
            self._describe()
            if not self._progress.console.is_terminal:
                total = int(self._progress.tasks[self._task].total or 0)
                self._progress.console.print(f"[{self._title} {self.completed}/{total}] {label} "
                                             f"done in {seconds:.0f} s{note}", markup=False)

    @contextmanager
    def step(self, label: str) -> Iterator[None]:
        self.start(label)
        yield
        self.done(label)


@contextmanager
def progress_bar(title: str, total: int, console: Console | None = None) -> Iterator[Steps]:
    """A bar of `total` steps for the duration of the block."""
    console = console or Console(stderr=True, soft_wrap=True)
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                        MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"),
                        TimeRemainingColumn(), console=console)
    with progress:
        yield Steps(progress, title, total)
