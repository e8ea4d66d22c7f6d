"""Revenue, upstream cost and margin of a set of records, grouped."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from payrouter.channels.records import is_call
from payrouter.journal import PaymentRecord, State

__all__ = ["GROUPINGS", "Grouping", "Totals", "group_key", "summarize"]

Grouping = Literal["model", "payer", "day"]
GROUPINGS: tuple[Grouping, ...] = ("model", "payer", "day")


@dataclass(slots=True)
class Totals:
    """One group's sums, in atomic units of the asset.

    Attributes:
        records: every record of the group, whatever its state.
        settled: how many of them are settled.
        revenue: ``charged`` summed over the settled ones: the money that moved.
        upstream_cost: ``upstream_cost`` summed over every record: a model that answered costs
            us whether or not the payment then settled (owed, unpaid, pending).
    """

    records: int = 0
    settled: int = 0
    revenue: int = 0
    upstream_cost: int = 0

    @property
    def margin(self) -> int:
        """Revenue less upstream cost (negative when serving lost money)."""
        return self.revenue - self.upstream_cost

    def add(self, record: PaymentRecord) -> None:
        """Count ``record`` in."""
        self.records += 1
        self.upstream_cost += record.upstream_cost
        if record.state == State.SETTLED:
            self.settled += 1
            self.revenue += record.charged


def group_key(record: PaymentRecord, by: Grouping | None) -> str:
    """The group ``record`` falls in: its routed model, its payer (lower case), the UTC day it
    was created (``YYYY-MM-DD``), or ``total`` without a grouping."""
    if by == "model":
        return record.model
    if by == "payer":
        return record.payer.lower()
    if by == "day":
        return datetime.fromtimestamp(record.created_at // 1000, UTC).strftime("%Y-%m-%d")
    return "total"


def summarize(records: Iterable[PaymentRecord], by: Grouping | None = None) -> dict[str, Totals]:
    """`Totals` of the paid calls per group, in sorted group order (one ``total`` group without
    ``by``). A channel's deposits, claims, settles and refunds are not calls: they move money
    its vouchers already counted."""
    groups: dict[str, Totals] = {}
    for record in records:
        if is_call(record):
            groups.setdefault(group_key(record, by), Totals()).add(record)
    return dict(sorted(groups.items()))
