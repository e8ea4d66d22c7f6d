"""Wait for a condition by polling it against a deadline, instead of sleeping a fixed time."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import TypeVar

import httpx

T = TypeVar("T")


def _timed_out(timeout: float, what: str, value: object) -> AssertionError:
    return AssertionError(f"not within {timeout} s: {what} (last value {value!r})")


def wait_until(condition: Callable[[], T], what: str, timeout: float = 5.0, interval: float = 0.005) -> T:
    """Call ``condition`` every ``interval`` seconds until it returns something truthy; return that.

    Raises:
        AssertionError: still falsy after ``timeout`` seconds; the message says ``what`` was awaited.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _timed_out(timeout, what, value)
        time.sleep(interval)


async def async_wait_until(
    condition: Callable[[], object], what: str, timeout: float = 5.0, interval: float = 0.005
) -> None:
    """`wait_until` for async tests: sleeps without blocking the loop; ``condition`` may be async."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        if loop.time() >= deadline:
            raise _timed_out(timeout, what, value)
        await asyncio.sleep(interval)


def healthz_until_every_worker(url: str, workers: int = 2, at_least: int = 0, limit: int = 400) -> int:
    """``GET /healthz`` on new connections until each of ``workers`` processes has answered (and
    ``at_least`` requests went out); returns how many were sent.

    Raises:
        AssertionError: ``limit`` requests were not enough.
    """
    pids: set[int] = set()
    sent = 0
    while len(pids) < workers or sent < at_least:
        assert sent < limit, f"only worker(s) {sorted(pids)} answered {sent} requests"
        pids.add(httpx.get(f"{url}/healthz", timeout=10).json()["worker"])
        sent += 1
    return sent
