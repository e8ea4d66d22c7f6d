"""The dashboard's "now": the Prometheus registry (what ``/metrics`` shows) read into plain data.

Counters count since each worker started; with ``PROMETHEUS_MULTIPROC_DIR`` set every worker of
this instance is summed, as on ``/metrics``. Latency percentiles are estimated from histogram
buckets the way PromQL's ``histogram_quantile`` does (linear inside the bucket).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, multiprocess

from payrouter import metrics as _metrics  # noqa: F401  (every family exists before the first read)
from payrouter.metrics.exposition import multiprocess_dir

__all__ = ["Samples", "current_state", "quantile", "read_registry"]

# sample name -> [(labels, value)]
Samples = dict[str, list[tuple[dict[str, str], float]]]
QUANTILES = (0.5, 0.95, 0.99)


def read_registry(registry: CollectorRegistry | None = None) -> Samples:
    """Every sample of ``registry`` (default: this instance's, multi-process aware) by sample name.

    ``*_created`` samples are left out. Reads one file per worker and metric type when
    multi-process: call it off the event loop then.
    """
    if registry is None:
        if multiprocess_dir() is not None:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        else:
            registry = REGISTRY
    out: Samples = defaultdict(list)
    for family in registry.collect():
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                out[sample.name].append((dict(sample.labels), sample.value))
    return out


def _sum_by(samples: Samples, name: str, keys: tuple[str, ...]) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = defaultdict(float)
    for labels, value in samples.get(name, []):
        out[tuple(labels.get(k, "") for k in keys)] += value
    return out


def quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of a histogram given as cumulative ``(upper bound, count)`` buckets.

    None without observations; the highest finite bound when the quantile falls in ``+Inf``.
    """
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    low_bound, low_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return low_bound
            if count == low_count:
                return bound
            return low_bound + (bound - low_bound) * (rank - low_count) / (count - low_count)
        low_bound, low_count = bound, count
    return low_bound


def _latency(samples: Samples, base: str, keys: tuple[str, ...]) -> dict[tuple[str, ...], dict[str, Any]]:
    """Per ``keys`` group of histogram ``base``: count, mean and percentiles in milliseconds."""
    buckets: dict[tuple[str, ...], dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for labels, value in samples.get(base + "_bucket", []):
        buckets[tuple(labels.get(k, "") for k in keys)][float(labels["le"])] += value
    sums = _sum_by(samples, base + "_sum", keys)
    out: dict[tuple[str, ...], dict[str, Any]] = {}
    for group, bounds in buckets.items():
        count = bounds.get(math.inf, 0.0)
        if count <= 0:
            continue
        row: dict[str, Any] = {"count": int(count), "mean_ms": round(sums.get(group, 0.0) / count * 1000, 1)}
        for q in QUANTILES:
            estimate = quantile(q, bounds.items())
            row[f"p{round(q * 100)}_ms"] = None if estimate is None else round(estimate * 1000, 1)
        out[group] = row
    return out


def _int(value: float) -> int:
    return int(round(value))


def current_state(samples: Samples) -> dict[str, Any]:
    """The panels' current-state data (JSON-ready; money as integer strings of atomic units)."""
    paid = _sum_by(samples, "payrouter_paid_calls_total", ("model",))
    revenue = _sum_by(samples, "payrouter_revenue_atomic_total", ("model",))
    cost = _sum_by(samples, "payrouter_upstream_cost_atomic_total", ("model",))
    routed = _sum_by(samples, "payrouter_routing_decisions_total", ("model",))
    breaker = _sum_by(samples, "payrouter_breaker_open", ("model",))
    upstream = _latency(samples, "payrouter_upstream_seconds", ("model",))
    first_byte = _latency(samples, "payrouter_upstream_first_byte_seconds", ("model",))
    names = sorted({k[0] for table in (paid, revenue, cost, routed, breaker, upstream, first_byte) for k in table})
    models = [
        {
            "model": name,
            "calls": _int(paid.get((name,), 0)),
            "routed": _int(routed.get((name,), 0)),
            "revenue": str(_int(revenue.get((name,), 0))),
            "cost": str(_int(cost.get((name,), 0))),
            "margin": str(_int(revenue.get((name,), 0)) - _int(cost.get((name,), 0))),
            "breaker_open": breaker.get((name,), 0) > 0,
            "latency": upstream.get((name,)),
            "first_byte": first_byte.get((name,)),
        }
        for name in names
    ]
    scheme_calls = _sum_by(samples, "payrouter_paid_calls_total", ("scheme",))
    revenue_total = sum(_int(v) for v in revenue.values())
    cost_total = sum(_int(v) for v in cost.values())
    totals: dict[str, Any] = {
        "paid_calls": _int(sum(paid.values())),
        "paid_by_scheme": {k[0]: _int(v) for k, v in sorted(scheme_calls.items())},
        "revenue": str(revenue_total),
        "cost": str(cost_total),
        "margin": str(revenue_total - cost_total),
        "quotes": _int(sum(v for _, v in samples.get("payrouter_quotes_total", []))),
        "refusals": _int(sum(v for _, v in samples.get("payrouter_payment_refusals_total", []))),
        "failovers": _int(sum(v for _, v in samples.get("payrouter_failovers_total", []))),
        "gas_wei": str(_int(sum(v for _, v in samples.get("payrouter_gas_spent_wei_total", [])))),
    }
    return {
        "totals": totals,
        "models": models,
        "routing": _rows(samples, "payrouter_routing_decisions_total", ("strategy", "model", "reason")),
        "failovers": _rows(samples, "payrouter_failovers_total", ("from_model", "to_model")),
        "refusals": _rows(samples, "payrouter_payment_refusals_total", ("scheme", "reason")),
        "requests": _rows(samples, "payrouter_requests_total", ("endpoint", "status")),
        "verify": _keyed(_latency(samples, "payrouter_verify_seconds", ("scheme",))),
        "settle": _keyed(_latency(samples, "payrouter_settle_seconds", ("scheme",))),
        "journal_open": {k[0]: _int(v) for k, v in _sum_by(samples, "payrouter_journal_records", ("state",)).items()},
        "split": split_arms(samples),
    }


def _rows(samples: Samples, name: str, keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """Non-zero counts of ``name`` by ``keys``, largest first."""
    rows = [
        {**dict(zip(keys, group, strict=True)), "count": _int(value)}
        for group, value in _sum_by(samples, name, keys).items()
        if value > 0
    ]
    return sorted(rows, key=lambda r: (-r["count"], [r[k] for k in keys]))


def _keyed(table: Mapping[tuple[str, ...], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {group[0]: row for group, row in sorted(table.items())}


def split_arms(samples: Samples) -> list[dict[str, Any]]:
    """One entry per split rule that has routed calls: its arms side by side (control first).

    Each arm: calls and the models that answered them, revenue, latency percentiles, and the
    payers' ratings of the arm's models (FEEDBACK by arm, summed over models).
    """
    calls = _sum_by(samples, "payrouter_split_calls_total", ("rule", "arm", "model"))
    revenue = _sum_by(samples, "payrouter_split_revenue_atomic_total", ("rule", "arm"))
    latency = _latency(samples, "payrouter_split_seconds", ("rule", "arm"))
    ratings = _sum_by(samples, "payrouter_feedback_total", ("arm", "rating"))
    arms: dict[tuple[str, str], dict[str, Any]] = {}
    for (rule, arm, model), value in calls.items():
        if not arm:
            continue
        entry = arms.setdefault((rule, arm), {"rule": rule, "arm": arm, "calls": 0, "models": {}})
        entry["calls"] += _int(value)
        entry["models"][model] = entry["models"].get(model, 0) + _int(value)
    for rule, arm in list(revenue) + list(latency):
        if arm:
            arms.setdefault((rule, arm), {"rule": rule, "arm": arm, "calls": 0, "models": {}})
    rules: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for (rule, arm), entry in sorted(arms.items(), key=lambda kv: (kv[0][0], kv[0][1] != "control", kv[0][1])):
        entry["revenue"] = str(_int(revenue.get((rule, arm), 0)))
        entry["latency"] = latency.get((rule, arm))
        # feedback is labelled by arm, not rule: with several rules, each arm shows the sum over rules
        entry["feedback"] = {r: _int(v) for (a, r), v in sorted(ratings.items()) if a == arm and v > 0}
        rules[rule].append(entry)
    return [{"rule": rule, "arms": entries} for rule, entries in sorted(rules.items())]
