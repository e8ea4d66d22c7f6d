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
from payrouter.x402.schemes.batch import BATCH, BatchScheme

__all__ = ["MAX_CHANNELS", "dashboard_data", "unclaimed_channels"]

# most channels one refresh reads for the unclaimed total (each is one hash in the store)
MAX_CHANNELS = 2000

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
        "channels": None,
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
    batch = services.schemes.get(BATCH)
    if isinstance(batch, BatchScheme):
        try:
            doc["channels"] = await asyncio.wait_for(unclaimed_channels(batch), _STORE_TIMEOUT)
        except (StoreError, TimeoutError) as exc:
            errors.append(f"channels unavailable: {exc.__class__.__name__}")
    return doc


async def unclaimed_channels(batch: BatchScheme, limit: int = MAX_CHANNELS) -> dict[str, Any]:
    """Money payers owe on channels: charged for served requests but not yet claimed on chain
    (the claimer's next pass collects it). ``complete`` is false when there were more than
    ``limit`` channels (the first ``limit`` were read).

    Raises:
        StoreError: the channel store cannot be read.
    """
    ids = await batch.store.ids()
    states = await batch.store.get_many(ids[:limit])
    owed = [s.charged - s.total_claimed for s in states.values() if s.charged > s.total_claimed]
    return {"channels": len(owed), "amount": str(sum(owed)), "open": len(states), "complete": len(ids) <= limit}
