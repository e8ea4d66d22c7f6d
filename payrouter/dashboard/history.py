"""The dashboard's history: paid calls over a time window, read from the payment journal.

The journal is shared by every instance and survives restarts, so this is the view that spans
them. Reads are bounded: a window is one of `WINDOWS` and at most ``max_records`` records are
read, newest first (older ones are left out and the answer says from when it is complete).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from payrouter.channels.records import is_call
from payrouter.journal import Journal, PaymentRecord, State

__all__ = [
    "WINDOWS",
    "Call",
    "HistoryCache",
    "Window",
    "calls_of",
    "history",
    "open_payments",
    "read_calls",
    "read_window",
]

# the strategy of the decision inside a record's priced route, without parsing the whole JSON
_STRATEGY = re.compile(r'"strategy":"([^"\\]*)"')
TOP_PAYERS = 10
OLDEST_OPEN = 10


@dataclass(frozen=True, slots=True)
class Window:
    """A time window the dashboard offers: its span and the width of each chart bucket."""

    name: str
    seconds: int
    bucket_seconds: int

    def bounds(self, now_ms: int) -> tuple[int, int]:
        """``(start_ms, bucket_ms)``: buckets aligned to their width, the last one holding ``now_ms``."""
        bucket = self.bucket_seconds * 1000
        count = self.seconds // self.bucket_seconds
        return (now_ms // bucket - count + 1) * bucket, bucket


WINDOWS = {
    w.name: w
    for w in (
        Window("1h", 3600, 60),
        Window("6h", 6 * 3600, 300),
        Window("24h", 24 * 3600, 1800),
        Window("7d", 7 * 24 * 3600, 3 * 3600),
    )
}
# A window is read newest first, a bucket at a time, each bucket in pages: every page's records
# are parsed on the event loop, so pages stay small and paid requests are served between them.
_PAGE = 50
T = TypeVar("T")


async def read_window(
    journal: Journal, start_ms: int, end_ms: int, bucket_ms: int, max_records: int
) -> tuple[list[PaymentRecord], int]:
    """Records created in ``[start_ms, end_ms]``, at most ``max_records`` of them.

    Reads newest first, a bucket at a time; when the cap is reached the oldest bucket read
    is dropped whole, so the history is complete from the returned time on (``start_ms`` when
    nothing was left out).

    Raises:
        StoreError: the journal cannot be read.
    """
    records, _count, complete_from = await _read(journal, start_ms, end_ms, bucket_ms, max_records, list)
    return records, complete_from


async def read_calls(
    journal: Journal, start_ms: int, end_ms: int, bucket_ms: int, max_records: int
) -> tuple[list[Call], int, int]:
    """`read_window`, each page of records turned into `Call` rows as soon as it is read (the
    records themselves are not all held at once): ``(calls, records read, complete from)``.

    Raises:
        StoreError: the journal cannot be read.
    """
    return await _read(journal, start_ms, end_ms, bucket_ms, max_records, calls_of)


async def _read(
    journal: Journal,
    start_ms: int,
    end_ms: int,
    bucket_ms: int,
    max_records: int,
    keep: Callable[[list[PaymentRecord]], list[T]],
) -> tuple[list[T], int, int]:
    out: list[T] = []
    count = 0
    high = end_ms
    while high >= start_ms:
        low = max(start_ms, high // bucket_ms * bucket_ms)  # slices end on bucket boundaries
        found = await _slice(journal, low, high, max_records - count, keep)
        if found is None:
            return out, count, high + 1
        out += found[0]
        count += found[1]
        high = low - 1
    return out, count, start_ms


async def _slice(
    journal: Journal, low: int, high: int, room: int, keep: Callable[[list[PaymentRecord]], list[T]]
) -> tuple[list[T], int] | None:
    """``keep`` of the records created in ``[low, high]``, read in pages of `_PAGE`, and how many
    records they were; None when more than ``room``.

    `Journal.records` has a limit but no offset: a page starts at the last time seen, skipping
    the records already read at that millisecond (a page wholly taken by one millisecond is read
    again, twice as large).
    """
    out: list[T] = []
    count = 0
    seen: set[str] = set()
    start, size = low, _PAGE
    while True:
        batch = await journal.records(start, high, limit=size)
        new = [r for r in batch if r.id not in seen]
        count += len(new)
        if count > room:
            return None
        out += keep(new)
        if len(batch) < size:
            return out, count
        if not new:
            size *= 2
            continue
        start, size = new[-1].created_at, _PAGE
        seen = {r.id for r in batch if r.created_at == start}


@dataclass(frozen=True, slots=True)
class Call:
    """What the history needs of one paid call's record (a few fields: windows are cached).

    Attributes:
        settled: the payment is settled (``charged`` moved); otherwise it only cost us.
        strategy: the routing strategy of the decision that chose ``model``.
    """

    created_at: int
    settled: bool
    charged: int
    cost: int
    model: str
    payer: str
    strategy: str
    scheme: str
    input_tokens: int
    output_tokens: int


def calls_of(records: Iterable[PaymentRecord]) -> list[Call]:
    """The paid calls among ``records``: exact payments and channel vouchers that delivered
    (any state but ``released``); a channel's deposits, claims, settles and refunds are not calls."""
    out = []
    for r in records:
        if not is_call(r) or r.state == State.RELEASED:
            continue
        found = _STRATEGY.search(r.route)
        out.append(
            Call(
                created_at=r.created_at,
                settled=r.state == State.SETTLED,
                charged=r.charged,
                cost=r.upstream_cost,
                model=r.model,
                payer=r.payer.lower(),
                strategy=found.group(1) if found else "unknown",
                scheme=r.scheme,
                input_tokens=r.input_tokens,
                output_tokens=r.output_tokens,
            )
        )
    return out


@dataclass(slots=True)
class _Cached:
    old: list[Call]  # calls created before `boundary`: kept until the next full read
    boundary: int
    complete_from: int
    full_at: int


class HistoryCache:
    """The calls of each window, read in full at most every `FULL_EVERY_MS` and otherwise only
    from `RECENT_MS` back (younger records still change state: settling -> settled), so an open
    page costs a few recent records per refresh, not the whole window.

    A record older than `RECENT_MS` whose state changes later (a pending payment the reconciler
    settles) shows its new state after the next full read. One instance per app; concurrent
    refreshes of one window share a read.
    """

    RECENT_MS = 5 * 60_000
    FULL_EVERY_MS = 5 * 60_000

    def __init__(self, max_records: int) -> None:
        self.max_records = max_records
        self._windows: dict[str, _Cached] = {}
        self._locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.last_read = 0  # records the last call fetched from the journal

    async def calls(self, journal: Journal, window: Window, now_ms: int) -> tuple[list[Call], int, int]:
        """``(calls in the window, journal records they come from, complete from ms)`` as of ``now_ms``.

        Raises:
            StoreError: the journal cannot be read.
        """
        start, bucket = window.bounds(now_ms)
        async with self._locks[window.name]:
            cached = self._windows.get(window.name)
            boundary = now_ms - self.RECENT_MS
            if cached is None or now_ms - cached.full_at >= self.FULL_EVERY_MS:
                calls, self.last_read, complete_from = await read_calls(
                    journal, start, now_ms, bucket, self.max_records
                )
                old = [c for c in calls if c.created_at < boundary]
                self._windows[window.name] = _Cached(old, boundary, complete_from, now_ms)
                return calls, self.last_read, complete_from
            low = max(start, cached.boundary)
            fresh, read, fresh_from = await read_calls(journal, low, now_ms, bucket, self.max_records)
            self.last_read = read
            if fresh_from > low:  # the recent part alone fills the cap
                return fresh, read, fresh_from
            old = [c for c in cached.old if c.created_at >= start]
            room = self.max_records - read
            complete_from = max(start, cached.complete_from)
            if len(old) > room:
                old = sorted(old, key=lambda c: c.created_at)[len(old) - room :]
                complete_from = old[0].created_at if old else low
            return old + fresh, len(old) + read, complete_from


def history(calls_in: Iterable[Call], start_ms: int, end_ms: int, bucket_ms: int) -> dict[str, Any]:
    """Per-bucket and per-model sums of ``calls`` (see `calls_of`), and the top payers.

    Revenue is ``charged`` of the settled calls, cost the upstream cost of every call (a model
    that answered costs us whether or not the payment then settled), as in ``payrouter ledger
    summary``. Money is in integer strings of atomic units.
    """
    count = max(1, (end_ms - start_ms + bucket_ms - 1) // bucket_ms)
    calls = [0] * count
    revenue = [0] * count
    cost = [0] * count
    by_model: dict[str, list[int]] = defaultdict(lambda: [0] * count)
    by_strategy: dict[str, list[int]] = defaultdict(lambda: [0] * count)
    models: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    payers: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    schemes: dict[str, int] = defaultdict(int)
    for call in calls_in:
        at = (call.created_at - start_ms) // bucket_ms
        if not 0 <= at < count:
            continue
        charged = call.charged if call.settled else 0
        calls[at] += 1
        revenue[at] += charged
        cost[at] += call.cost
        by_model[call.model][at] += 1
        by_strategy[call.strategy][at] += 1
        schemes[call.scheme] += 1
        row = models[call.model]
        row["calls"] += 1
        row["settled"] += call.settled
        row["revenue"] += charged
        row["cost"] += call.cost
        row["input_tokens"] += call.input_tokens
        row["output_tokens"] += call.output_tokens
        payer = payers[call.payer]
        payer["calls"] += 1
        payer["revenue"] += charged
    top = sorted(payers.items(), key=lambda kv: (-kv[1]["revenue"], -kv[1]["calls"], kv[0]))[:TOP_PAYERS]
    return {
        "start_ms": start_ms,
        "bucket_ms": bucket_ms,
        "times": [start_ms + i * bucket_ms for i in range(count)],
        "calls": calls,
        "revenue": [str(v) for v in revenue],
        "cost": [str(v) for v in cost],
        "margin": [str(r - c) for r, c in zip(revenue, cost, strict=True)],
        "calls_by_model": dict(sorted(by_model.items())),
        "calls_by_strategy": dict(sorted(by_strategy.items())),
        "totals": {
            "calls": sum(calls),
            "revenue": str(sum(revenue)),
            "cost": str(sum(cost)),
            "margin": str(sum(revenue) - sum(cost)),
            "payers": len(payers),
            "by_scheme": dict(sorted(schemes.items())),
        },
        "models": [
            {
                "model": name,
                "calls": row["calls"],
                "settled": row["settled"],
                "revenue": str(row["revenue"]),
                "cost": str(row["cost"]),
                "margin": str(row["revenue"] - row["cost"]),
                "input_tokens": row["input_tokens"],
                "output_tokens": row["output_tokens"],
            }
            for name, row in sorted(models.items(), key=lambda kv: (-kv[1]["calls"], kv[0]))
        ],
        "top_payers": [{"payer": payer, "calls": row["calls"], "revenue": str(row["revenue"])} for payer, row in top],
    }


async def open_payments(journal: Journal, limit: int = 1000, now_ms: int | None = None) -> dict[str, Any]:
    """Payments not yet in a final state: count and amount per state (``pending``: broadcast,
    not confirmed; ``owed``: delivered, transfer failed; ``claimed``/``serving``/``settling``: in
    flight), and the oldest pending or owed ones. Reads at most ``limit`` records.

    Raises:
        StoreError: the journal cannot be read.
    """
    now = int(time.time() * 1000) if now_ms is None else now_ms
    records = await journal.open_records(limit)
    states: dict[str, dict[str, int]] = defaultdict(lambda: {"count": 0, "amount": 0})
    for record in records:
        states[record.state]["count"] += 1
        states[record.state]["amount"] += record.charged or record.amount
    stuck = [r for r in records if r.state in (State.PENDING, State.OWED)][:OLDEST_OPEN]
    return {
        "states": {s: {"count": v["count"], "amount": str(v["amount"])} for s, v in sorted(states.items())},
        "oldest": [
            {
                "id": r.id,
                "state": r.state,
                "payer": r.payer,
                "model": r.model,
                "amount": str(r.charged or r.amount),
                "age_s": max(0, (now - r.updated_at) // 1000),
                "reason": r.reason,
            }
            for r in stuck
        ],
        "complete": len(records) < limit,
    }
