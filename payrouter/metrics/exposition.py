"""Rendering the metrics for a scrape: the gauges computed from shared state, then the text.

With ``PROMETHEUS_MULTIPROC_DIR`` set (``payrouter serve --workers N``), every worker writes its
values to files in that directory and a scrape, answered by any one worker, adds them up
(prometheus_client's multiprocess collector); otherwise this process's registry is the answer.
"""

from __future__ import annotations

import os
from collections import Counter

import anyio.to_thread
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from payrouter import metrics
from payrouter.journal import Journal
from payrouter.journal.record import OPEN_STATES
from payrouter.upstream.health import HealthTracker

__all__ = ["CONTENT_TYPE", "MAX_OPEN_RECORDS", "multiprocess_dir", "refresh_gauges", "render"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Most open journal records one scrape reads (they are few: records leave the open states within
# seconds unless settlement is in doubt or a payer owes).
MAX_OPEN_RECORDS = 10_000


def multiprocess_dir() -> str | None:
    """The directory workers share their values through, or None (one process)."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


async def refresh_gauges(journal: Journal, health: HealthTracker) -> None:
    """Set the gauges that are computed when scraped: open journal records by state (read from
    the journal's open-record index) and each model's breaker (this instance's view, refreshed
    from the store every second)."""
    counts = Counter(record.state for record in await journal.open_records(MAX_OPEN_RECORDS))
    for state in sorted(OPEN_STATES):
        metrics.JOURNAL_RECORDS.labels(state=state).set(counts.get(state, 0))
    for model in health.models:
        metrics.BREAKER_OPEN.labels(model=model).set(0 if health.healthy(model) else 1)


def _generate() -> bytes:
    if multiprocess_dir() is None:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


async def render() -> bytes:
    """The Prometheus text exposition of every metric (all workers' values, summed or merged as
    each family says, when they share a multiprocess directory)."""
    if multiprocess_dir() is None:
        return _generate()
    return await anyio.to_thread.run_sync(_generate)  # reads one file per worker and metric type
