"""Progress of long CLI work on stderr: a live line on a terminal, plain lines elsewhere.

On a terminal the line is redrawn in place (a bar when the total is known, a spinner otherwise,
with the elapsed time ticking); in CI, a pipe or a file each step is one plain line, so logs stay
readable. ``NO_COLOR``-style opt-out: ``PAYROUTER_PROGRESS=plain`` forces plain lines,
``PAYROUTER_PROGRESS=off`` prints nothing.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

__all__ = ["Progress", "Task"]

_SPINNER = "|/-\\"
_BAR = 24


class Task:
    """One piece of work being reported; `advance` moves a counted task on by ``n``."""

    def __init__(self, progress: Progress, label: str, total: int | None) -> None:
        self._progress = progress
        self.label = label
        self.total = total
        self.done = 0
        self.started = time.monotonic()

    def advance(self, n: int = 1, note: str = "") -> None:
        """Count ``n`` more units done (a plain line per call off a terminal)."""
        self.done += n
        if self._progress.mode == "plain":
            self._progress.line(
                f"{self.label}: {self.done}/{self.total} {note}".rstrip() + f" ({self.elapsed():.1f} s)"
            )
        else:
            self._progress.redraw()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def render(self, tick: int) -> str:
        if self.total:
            filled = _BAR * self.done // self.total
            bar = "#" * filled + "-" * (_BAR - filled)
            return f"{self.label} [{bar}] {self.done}/{self.total} {self.elapsed():.1f} s"
        return f"{self.label} {_SPINNER[tick % len(_SPINNER)]} {self.elapsed():.1f} s"


class Progress:
    """Reports tasks on ``stream`` (default stderr).

    Args:
        stream: where to write.
        mode: ``live`` (redrawn line), ``plain`` (one line per step) or ``off``; by default
            ``$PAYROUTER_PROGRESS``, else ``live`` on a terminal outside CI and ``plain`` otherwise.
    """

    def __init__(self, stream: TextIO | None = None, mode: str | None = None) -> None:
        self.stream = stream or sys.stderr
        if mode is None:
            mode = os.environ.get("PAYROUTER_PROGRESS") or ""
        if mode not in ("live", "plain", "off"):
            tty = self.stream.isatty() and not os.environ.get("CI")
            mode = "live" if tty else "plain"
        self.mode = mode
        self._current: Task | None = None
        self._lock = threading.Lock()
        self._tick = 0

    def line(self, text: str) -> None:
        """Write one plain line (nothing when ``off``)."""
        if self.mode != "off":
            self.stream.write(text + "\n")
            self.stream.flush()

    def redraw(self) -> None:
        with self._lock:
            if self.mode == "live" and self._current is not None:
                self.stream.write("\r\x1b[2K" + self._current.render(self._tick))
                self.stream.flush()

    @contextmanager
    def task(self, label: str, total: int | None = None) -> Iterator[Task]:
        """Report ``label`` while the block runs, and its time when it ends."""
        task = Task(self, label, total)
        self._current = task
        stop = threading.Event()
        ticker = None
        if self.mode == "live":
            self.redraw()

            def tick() -> None:
                while not stop.wait(0.2):
                    self._tick += 1
                    self.redraw()

            ticker = threading.Thread(target=tick, daemon=True)
            ticker.start()
        elif self.mode == "plain":
            self.line(f"{label} ..." if not total else f"{label}: 0/{total}")
        try:
            yield task
        finally:
            stop.set()
            if ticker is not None:
                ticker.join()
            with self._lock:
                self._current = None
                if self.mode == "live":
                    self.stream.write("\r\x1b[2K")
            self.line(f"{label}: done in {task.elapsed():.1f} s")
