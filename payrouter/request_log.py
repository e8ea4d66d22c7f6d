"""The request log: one JSON line per paid or refused request, written off the hot path.

A paid request hands its event (a dict) to `RequestLog.write`, which only appends it to an
in-memory queue; a daemon thread wakes every 50 ms, serialises what is queued and appends it to
the file named by the service config's ``request_log`` (``"-"``: standard output) in one write.
So a slow disk never delays an answer, and a burst of calls costs one write.

Event fields (/work/team/CONTRACTS.md; README "Operating payrouter"): ``ts``, ``event``
(``call``, ``refusal`` or ``feedback``), ``request_id``, ``payer``, ``endpoint``, ``status``,
``scheme``, ``model``, ``strategy``, ``reason``, ``reason_kind``, ``rule``, ``arm``,
``candidates``, ``price``, ``charged``, ``cost``, ``input_tokens``, ``output_tokens``,
``latency_ms``, ``upstream_ms``, ``tx``, ``refusal`` (and ``message``: the refusal's text).
`payrouter.logs_cli` reads the file back.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections import deque
from pathlib import Path
from typing import Any

__all__ = ["RequestLog"]

log = logging.getLogger("payrouter.request_log")

# Events waiting beyond this are dropped (and counted): a stuck disk must not grow memory without bound.
_MAX_QUEUED = 100_000
# How often the writer wakes to write what is queued. The paid path only appends to a queue: it
# never wakes a thread (no lock hand-over, no GIL ping-pong per call); a line reaches the file
# at most this late.
_INTERVAL = 0.05
_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT


class RequestLog:
    """Appends events as JSON lines from a background thread.

    Several processes (``payrouter serve --workers N``) may share one file: each write is one
    ``write(2)`` of whole lines on an ``O_APPEND`` descriptor, so lines never interleave.

    Args:
        path: the file to append to, ``"-"`` for standard output, or None: logging is off and
            `write` does nothing (the service config's ``request_log`` unset).
    """

    def __init__(self, path: str | Path | None) -> None:
        self.path = None if path is None else str(path)
        self.dropped = 0
        self._queue: deque[dict[str, Any]] = deque()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        if self.path is not None:
            fd = sys.stdout.fileno() if self.path == "-" else os.open(self.path, _FLAGS, 0o640)
            self._thread = threading.Thread(target=self._run, args=(fd,), name="payrouter-request-log", daemon=True)
            self._thread.start()

    @property
    def enabled(self) -> bool:
        """Events are written somewhere (building one is wasted work otherwise)."""
        return self._thread is not None

    def write(self, event: dict[str, Any]) -> None:
        """Queue ``event`` for writing; never blocks, never raises. The caller must not change
        ``event`` afterwards (it is serialised later, in another thread)."""
        if self._thread is None:
            return
        if len(self._queue) >= _MAX_QUEUED:
            self.dropped += 1
            return
        self._queue.append(event)  # atomic: no lock, and the writer is not woken

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop the thread (waits at most ``timeout`` seconds)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping.set()
        thread.join(timeout)
        if self.dropped:
            log.warning("request log: %d events dropped (the writer fell behind)", self.dropped)

    def _run(self, fd: int) -> None:
        try:
            while True:
                stopping = self._stopping.wait(_INTERVAL)
                lines = []
                while self._queue:
                    lines.append(json.dumps(self._queue.popleft(), separators=(",", ":"), default=str) + "\n")
                if lines:
                    self._append(fd, "".join(lines).encode())
                if stopping:
                    return
        finally:
            if self.path != "-":
                os.close(fd)

    def _append(self, fd: int, data: bytes) -> None:
        try:
            while data:
                data = data[os.write(fd, data) :]
        except OSError as exc:  # a full disk: say so, keep serving
            log.warning("request log %s: %s", self.path, exc)
