"""Everything one dashboard refresh shows, as one JSON-ready document."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import anyio.to_thread

from payrouter.dashboard.current import current_state, read_registry
from payrouter.dashboard.history import HistoryCache, Window, history, open_payments
from payrouter.metrics.exposition import multiprocess_dir
from payrouter.services import Services
from payrouter.store import StoreError

__all__ = ["dashboard_data"]

# every read of the store is bounded in time: a slow Redis shows as an error on the page, not a hung refresh
_STORE_TIMEOUT = 5.0


async def dashboard_data(services: Services, window: Window, cache: HistoryCache) -> dict[str, Any]:
    """The data of every panel.

    ``current``: this instance's Prometheus registry (since its workers started);
    ``history`` and ``payments``: the payment journal (every instance, survives restarts; the
    window's calls through ``cache``);
    ``health``: model health shared through the store. A part that cannot be read is null and
    its failure is listed in ``errors``. Money is in integer strings of atomic units of ``asset``.
    """
    now_ms = int(time.time() * 1000)
    start_ms, bucket_ms = window.bounds(now_ms)
    table = services.table
    errors: list[str] = []
    if multiprocess_dir() is None:
        samples = read_registry()
    else:
        samples = await anyio.to_thread.run_sync(read_registry)
    doc: dict[str, Any] = {
        "now_ms": now_ms,
        "window": {"name": window.name, "seconds": window.seconds, "bucket_seconds": window.bucket_seconds},
        "asset": {"address": table.asset.address, "name": table.asset.name, "decimals": table.asset.decimals},
        "network": table.network,
        "catalog": [m.id for m in table.models],
        "current": current_state(samples),
        "history": None,
        "payments": None,
        "health": None,
        "errors": errors,
    }
    try:
        calls, read, complete_from = await asyncio.wait_for(
            cache.calls(services.journal, window, now_ms), _STORE_TIMEOUT
        )
        # sums over up to max_records calls: in a thread, so the event loop keeps serving paid
        # requests (it gets the GIL back every few milliseconds)
        summed = await anyio.to_thread.run_sync(history, calls, start_ms, now_ms, bucket_ms)
        doc["history"] = {
            **summed,
            "records_read": read,
            "complete_from_ms": complete_from,
        }
    except (StoreError, TimeoutError) as exc:
        errors.append(f"journal history unavailable: {exc.__class__.__name__}")
    try:
        doc["payments"] = await asyncio.wait_for(open_payments(services.journal, now_ms=now_ms), _STORE_TIMEOUT)
    except (StoreError, TimeoutError) as exc:
        errors.append(f"open payments unavailable: {exc.__class__.__name__}")
    try:
        doc["health"] = await asyncio.wait_for(services.health.snapshot(), _STORE_TIMEOUT)
    except (StoreError, TimeoutError) as exc:
        errors.append(f"model health unavailable: {exc.__class__.__name__}")
    return doc
