"""The dashboard's history: paid calls over a time window, read from the payment journal.

The journal is shared by every instance and survives restarts, so this is the view that spans
them. Reads are bounded: a window is one of `WINDOWS` and at most ``max_records`` records are
read, newest first (older ones are left out and the answer says from when it is complete).
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from payrouter.channels.records import is_call
from payrouter.journal import Journal, PaymentRecord, State

__all__ = ["WINDOWS", "Window", "history", "open_payments", "read_window"]

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
# records read per journal call: a window is read newest first in slices of this many buckets
_SLICE_BUCKETS = 6


async def read_window(
    journal: Journal, start_ms: int, end_ms: int, bucket_ms: int, max_records: int
) -> tuple[list[PaymentRecord], int]:
    """Records created in ``[start_ms, end_ms]``, at most ``max_records`` of them.

    Reads newest first, a few buckets at a time; when the cap is reached the oldest slice read
    is dropped whole, so the history is complete from the returned time on (``start_ms`` when
    nothing was left out).

    Raises:
        StoreError: the journal cannot be read.
    """
    out: list[PaymentRecord] = []
    high = end_ms
    step = bucket_ms * _SLICE_BUCKETS
    while high >= start_ms:
        low = max(start_ms, high - step + 1)
        room = max_records - len(out)
        batch = await journal.records(low, high, limit=room + 1)
        if len(batch) > room:
            return out, high + 1
        out += batch
        high = low - 1
    return out, start_ms


def _strategy(record: PaymentRecord) -> str:
    found = _STRATEGY.search(record.route)
    return found.group(1) if found else "unknown"


def history(records: list[PaymentRecord], start_ms: int, end_ms: int, bucket_ms: int) -> dict[str, Any]:
    """Per-bucket and per-model sums of the paid calls among ``records``, and the top payers.

    A call is an exact payment or a channel voucher that delivered (any state but ``released``);
    revenue is ``charged`` of the settled ones, cost the ``upstream_cost`` of every call (a
    model that answered costs us whether or not the payment then settled), as in
    ``payrouter ledger summary``. Money is in integer strings of atomic units.
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
    for record in records:
        if not is_call(record) or record.state == State.RELEASED:
            continue
        at = (record.created_at - start_ms) // bucket_ms
        if not 0 <= at < count:
            continue
        charged = record.charged if record.state == State.SETTLED else 0
        calls[at] += 1
        revenue[at] += charged
        cost[at] += record.upstream_cost
        by_model[record.model][at] += 1
        by_strategy[_strategy(record)][at] += 1
        schemes[record.scheme] += 1
        row = models[record.model]
        row["calls"] += 1
        row["settled"] += record.state == State.SETTLED
        row["revenue"] += charged
        row["cost"] += record.upstream_cost
        row["input_tokens"] += record.input_tokens
        row["output_tokens"] += record.output_tokens
        payer = payers[record.payer.lower()]
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
