"""Wait for a condition by polling it against a deadline, instead of sleeping a fixed time."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import TypeVar

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
