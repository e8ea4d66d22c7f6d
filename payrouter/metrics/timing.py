"""Timing an awaitable into a histogram without changing what it returns or raises."""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import TypeVar

from prometheus_client import Histogram

__all__ = ["timed"]

T = TypeVar("T")


async def timed(awaitable: Awaitable[T], histogram: Histogram) -> T:
    """Await ``awaitable`` and observe how long it took in ``histogram`` (a labelled child),
    whether it returned or raised."""
    started = time.perf_counter()
    try:
        return await awaitable
    finally:
        histogram.observe(time.perf_counter() - started)
