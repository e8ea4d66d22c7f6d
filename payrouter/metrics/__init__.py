"""The service's Prometheus metrics: one module-level object per family, created at import.

Any module increments them directly (``metrics.PAID_CALLS.labels(scheme=..., model=...).inc()``);
an increment is a lock and an add in memory (a write to a memory-mapped file when
``PROMETHEUS_MULTIPROC_DIR`` is set), never I/O on the event loop. ``GET /metrics`` renders them
(`payrouter.metrics.exposition`). Names and labels are fixed by /work/team/CONTRACTS.md and the
README's "Operating payrouter"; money is in integer atomic units of the asset.

Multi-process: prometheus_client picks its value storage when it is first imported, so
``PROMETHEUS_MULTIPROC_DIR`` must be set in the environment before a worker imports this module.
Gauges then say how workers combine: margin is summed, states computed at scrape time take the
most recent value written.
"""

from __future__ import annotations

from typing import TypeVar

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

__all__ = [
    "BREAKER_OPEN",
    "FAILOVERS",
    "FEEDBACK",
    "GAS_SPENT",
    "JOURNAL_RECORDS",
    "MARGIN",
    "PAID_CALLS",
    "QUOTES",
    "REFUSALS",
    "REQUESTS",
    "REVENUE",
    "ROUTING_DECISIONS",
    "SETTLE_SECONDS",
    "SPLIT_CALLS",
    "SPLIT_REVENUE",
    "SPLIT_SECONDS",
    "UPSTREAM_COST",
    "UPSTREAM_FIRST_BYTE",
    "UPSTREAM_SECONDS",
    "VERIFY_SECONDS",
    "child",
]

M = TypeVar("M", bound=MetricWrapperBase)
_children: dict[tuple[int, tuple[str, ...]], MetricWrapperBase] = {}


def child(metric: M, *values: str) -> M:
    """``metric.labels(*values)`` (label values in declaration order), remembered: labels() takes
    a lock and checks its arguments on every call, a dict lookup is a tenth of that. Only for
    label values from a small set (models, schemes, endpoints, statuses, reason kinds)."""
    key = (id(metric), values)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*values)
    return found  # type: ignore[return-value]


# Model calls take from tens of milliseconds (cached, small) to minutes (long generations).
_UPSTREAM_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# A signature check is sub-millisecond; a balance read or a remote facilitator is a round trip.
_VERIFY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Settlement waits for a block on a real chain (~2 s on Base), or nothing for a voucher.
_SETTLE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

REQUESTS = Counter("payrouter_requests", "HTTP requests answered, by endpoint and status.", ["endpoint", "status"])
QUOTES = Counter(
    "payrouter_quotes", "402 payment quotes given, by endpoint and offered scheme.", ["endpoint", "scheme"]
)
PAID_CALLS = Counter(
    "payrouter_paid_calls", "Calls served on a payment, by scheme and answering model.", ["scheme", "model"]
)
REFUSALS = Counter(
    "payrouter_payment_refusals",
    "Payments refused, by scheme and reason kind (the x402 error code).",
    ["scheme", "reason"],
)
REVENUE = Counter("payrouter_revenue_atomic", "Money charged, in atomic units of the asset.", ["model", "asset"])
UPSTREAM_COST = Counter(
    "payrouter_upstream_cost_atomic",
    "Upstream cost of the calls charged, in atomic units of the asset.",
    ["model", "asset"],
)
MARGIN = Gauge(
    "payrouter_margin_atomic",
    "Revenue minus upstream cost, in atomic units of the asset (may go down: a call can cost more than it paid).",
    ["model", "asset"],
    multiprocess_mode="sum",
)
ROUTING_DECISIONS = Counter(
    "payrouter_routing_decisions",
    "Routing decisions, by strategy, chosen model and reason kind (rule, strategy, named, split, fallback).",
    ["strategy", "model", "reason"],
)
FAILOVERS = Counter("payrouter_failovers", "Calls moved to another model after a failure.", ["from_model", "to_model"])
BREAKER_OPEN = Gauge(
    "payrouter_breaker_open", "1 while a model's circuit breaker is open.", ["model"], multiprocess_mode="mostrecent"
)
UPSTREAM_FIRST_BYTE = Histogram(
    "payrouter_upstream_first_byte_seconds",
    "Time from sending a model call to its first byte (an answer, or a stream's first chunk).",
    ["provider", "model"],
    buckets=_UPSTREAM_BUCKETS,
)
UPSTREAM_SECONDS = Histogram(
    "payrouter_upstream_seconds",
    "Time from sending a model call to its last byte.",
    ["provider", "model"],
    buckets=_UPSTREAM_BUCKETS,
)
VERIFY_SECONDS = Histogram(
    "payrouter_verify_seconds", "Time to verify a payment, by scheme.", ["scheme"], buckets=_VERIFY_BUCKETS
)
SETTLE_SECONDS = Histogram(
    "payrouter_settle_seconds", "Time to settle (or commit) a payment, by scheme.", ["scheme"], buckets=_SETTLE_BUCKETS
)
JOURNAL_RECORDS = Gauge(
    "payrouter_journal_records",
    "Payment journal records not yet in a terminal state, by state (computed when scraped).",
    ["state"],
    multiprocess_mode="mostrecent",
)
GAS_SPENT = Counter("payrouter_gas_spent_wei", "Gas paid by the service's own transactions, in wei.")
SPLIT_CALLS = Counter(
    "payrouter_split_calls", "Calls routed by a split rule, by rule, arm and model.", ["rule", "arm", "model"]
)
SPLIT_SECONDS = Histogram(
    "payrouter_split_seconds",
    "Latency of calls routed by a split rule, by rule and arm.",
    ["rule", "arm"],
    buckets=_UPSTREAM_BUCKETS,
)
SPLIT_REVENUE = Counter(
    "payrouter_split_revenue_atomic", "Money charged on calls routed by a split rule, in atomic units.", ["rule", "arm"]
)
FEEDBACK = Counter(
    "payrouter_feedback", "Payer ratings of completions, by model, arm and rating.", ["model", "arm", "rating"]
)
