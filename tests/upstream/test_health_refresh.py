"""The health snapshot's background refresh starts, follows the store, and always stops."""

from __future__ import annotations

import asyncio
import json
import time

from payrouter.store import MemoryStore, StoreError
from payrouter.upstream.health import HealthTracker

from ..polling import async_wait_until


class _SwallowsCancellation(MemoryStore):
    """A store whose client turns a cancellation into its own error (as some client libraries can)."""

    reads = 0

    async def get(self, key: str) -> bytes | None:
        self.reads += 1
        try:
            await asyncio.sleep(0.005)
        except asyncio.CancelledError:
            raise StoreError("connection reset while cancelling") from None
        return await super().get(key)


async def test_refresh_follows_the_store_and_stops() -> None:
    store = MemoryStore()
    tracker = HealthTracker(store, ["m"])
    tracker.start(interval=0.01)
    assert tracker.healthy("m")
    await store.put("health:breaker:m", json.dumps({"until": time.time() + 30, "reason": "x"}).encode(), 30)
    # another instance opened the breaker; this one sees it at its next refresh
    await async_wait_until(lambda: not tracker.healthy("m"), "the refresh to see the open breaker", timeout=2)
    await asyncio.wait_for(tracker.stop(), 1)


async def test_stop_returns_even_when_the_store_loses_the_cancellation() -> None:
    store = _SwallowsCancellation()
    tracker = HealthTracker(store, [f"m{i}" for i in range(50)])
    tracker.start(interval=0.0)
    await async_wait_until(lambda: store.reads > 0, "the refresh to start its 50 slow reads", timeout=2)
    started = time.monotonic()
    await asyncio.wait_for(tracker.stop(grace=2.0), 5)
    assert time.monotonic() - started < 1.0
    assert tracker._task is not None and tracker._task.done()
