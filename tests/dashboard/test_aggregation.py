"""The dashboard's sums: journal history (bucketing, bounds, caps) and the Prometheus reading
(percentiles, canary arms), on real registries and a real Redis journal."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from payrouter.dashboard.current import current_state, quantile, read_registry, split_arms
from payrouter.dashboard.history import WINDOWS, HistoryCache, calls_of, history, open_payments, read_window
from payrouter.journal import PaymentRecord, RedisJournal, State
from payrouter.store.redis import connect
from tests.redis_keys import delete_namespace, run_token

REDIS_URL = "redis://127.0.0.1:6379/0"
T0 = 1_740_823_200_000  # 2025-03-01T10:00:00Z, a whole hour
MINUTE = 60_000


def _record(
    at: int, *, payer: str = "0xAA", model: str = "m1", state: str = State.SETTLED, **kw: object
) -> PaymentRecord:
    fields: dict[str, object] = {
        "id": f"exact:{payer}:{secrets.token_hex(8)}",
        "scheme": "exact",
        "state": state,
        "owner": "o",
        "payer": payer,
        "pay_to": "0xBB",
        "asset": "0xCC",
        "network": "eip155:31337",
        "amount": 100,
        "nonce": "0x01",
        "valid_before": 0,
        "x402_version": 2,
        "payment": "{}",
        "fingerprint": "f",
        "request": "r",
        "path": "/v1/chat/completions",
        "stream": False,
        "route": '{"requirements":{},"decision":{"model":"m1","strategy":"balanced","reason":"x"}}',
        "model": model,
        "charged": 100,
        "upstream_cost": 30,
        "created_at": at,
        "updated_at": at,
    }
    fields.update(kw)
    return PaymentRecord(**fields)  # type: ignore[arg-type]


def test_history_buckets_and_sums() -> None:
    start, bucket = T0, MINUTE
    records = [
        _record(T0 + 5_000),
        _record(T0 + 65_000, payer="0xDD", model="m2", charged=250, upstream_cost=50, route=""),
        _record(T0 + 70_000, state=State.PENDING, charged=0),  # delivered, not settled: cost, no revenue
        _record(T0 + 80_000, state=State.RELEASED),  # nothing delivered
        _record(T0 + 90_000, scheme="batch-settlement", id="batch-deposit:0x1:0x2", path="deposit"),  # not a call
        _record(T0 - 1, model="old"),  # before the window
    ]
    doc = history(calls_of(records), start, start + 3 * bucket, bucket)
    assert doc["times"] == [T0, T0 + MINUTE, T0 + 2 * MINUTE]
    assert doc["calls"] == [1, 2, 0]
    assert doc["revenue"] == ["100", "250", "0"]
    assert doc["cost"] == ["30", "80", "0"]
    assert doc["margin"] == ["70", "170", "0"]
    assert doc["calls_by_model"] == {"m1": [1, 1, 0], "m2": [0, 1, 0]}
    assert doc["calls_by_strategy"] == {"balanced": [1, 1, 0], "unknown": [0, 1, 0]}
    assert doc["totals"] == {
        "calls": 3,
        "revenue": "350",
        "cost": "110",
        "margin": "240",
        "payers": 2,
        "by_scheme": {"exact": 3},
    }
    assert [(p["payer"], p["calls"], p["revenue"]) for p in doc["top_payers"]] == [
        ("0xdd", 1, "250"),
        ("0xaa", 2, "100"),
    ]
    m1 = next(m for m in doc["models"] if m["model"] == "m1")
    assert (m1["calls"], m1["settled"], m1["revenue"], m1["cost"]) == (2, 1, "100", "60")


def test_windows_align_buckets_to_now() -> None:
    for window in WINDOWS.values():
        now = T0 + 123_456
        start, bucket = window.bounds(now)
        assert start % bucket == 0 and bucket == window.bucket_seconds * 1000
        count = window.seconds // window.bucket_seconds
        assert start + (count - 1) * bucket <= now < start + count * bucket
        assert count <= 72


@pytest.fixture
async def journal() -> AsyncIterator[RedisJournal]:
    namespace = f"payrouter-dash-unit-{run_token()}"
    j = RedisJournal(connect(REDIS_URL), namespace)
    try:
        yield j
    finally:
        await j.close()
        delete_namespace(REDIS_URL, namespace)


async def test_read_window_keeps_the_newest_under_the_cap(journal: RedisJournal) -> None:
    # 30 records, one per minute; slices are one bucket (1 min), read newest first
    for i in range(30):
        await journal.open(_record(T0 + i * MINUTE, state=State.CLAIMED))
    end = T0 + 30 * MINUTE - 1
    everything, complete_from = await read_window(journal, T0, end, MINUTE, max_records=100)
    assert len(everything) == 30 and complete_from == T0
    capped, complete_from = await read_window(journal, T0, end, MINUTE, max_records=14)
    # 14 slices fit; the 15th would overflow, so history is complete from its end
    assert len(capped) == 14 and complete_from == T0 + 16 * MINUTE
    assert min(r.created_at for r in capped) == complete_from
    narrow, _ = await read_window(journal, T0 + 10 * MINUTE, T0 + 12 * MINUTE - 1, MINUTE, max_records=100)
    assert sorted(r.created_at for r in narrow) == [T0 + 10 * MINUTE, T0 + 11 * MINUTE]


async def test_read_window_pages_through_a_busy_bucket(journal: RedisJournal) -> None:
    # more than a page in one bucket, and more than a page in one millisecond
    same_ms = [_record(T0 + 30_000, state=State.CLAIMED) for _ in range(250)]
    spread = [_record(T0 + i * 100, state=State.CLAIMED) for i in range(200)]
    for record in same_ms + spread:
        await journal.open(record)
    records, complete_from = await read_window(journal, T0, T0 + MINUTE - 1, MINUTE, max_records=1000)
    assert sorted(r.id for r in records) == sorted(r.id for r in same_ms + spread) and complete_from == T0
    records, complete_from = await read_window(journal, T0, T0 + MINUTE - 1, MINUTE, max_records=449)
    assert records == [] and complete_from == T0 + MINUTE  # the bucket does not fit: left out whole


async def test_cache_rereads_only_the_recent_part(journal: RedisJournal) -> None:
    window = WINDOWS["1h"]
    now = T0 + 30 * MINUTE
    recent = [_record(now - i * MINUTE, state=State.CLAIMED) for i in range(1, 4)]  # younger than RECENT_MS
    for i in range(10, 15):
        await journal.open(_record(now - i * MINUTE))
    for record in recent:
        await journal.open(record)
    cache = HistoryCache(max_records=100)
    calls, read, complete_from = await cache.calls(journal, window, now)
    assert (len(calls), read, cache.last_read, sum(c.settled for c in calls)) == (8, 8, 8, 0)
    # a new call, a recent one settled: both seen at once; a record written into the old part is not
    # read again until the next full read
    await journal.open(_record(now + 1000, state=State.CLAIMED))
    settled = replace(recent[0], state=State.SETTLED, owner=recent[0].owner)
    await journal.advance(replace(recent[0], state=State.SERVING), [State.CLAIMED])
    await journal.advance(replace(settled, state=State.SETTLING), [State.SERVING])
    await journal.advance(settled, [State.SETTLING])
    await journal.open(_record(now - 20 * MINUTE))
    calls, read, _ = await cache.calls(journal, window, now + 2000)
    assert (len(calls), read, cache.last_read, sum(c.settled for c in calls)) == (9, 9, 4, 1)
    later = now + HistoryCache.FULL_EVERY_MS
    calls, read, complete_from = await cache.calls(journal, window, later)
    assert (len(calls), read, cache.last_read, complete_from) == (10, 10, 10, window.bounds(later)[0])


async def test_cache_keeps_the_newest_under_the_cap(journal: RedisJournal) -> None:
    window = WINDOWS["1h"]
    now = T0 + 30 * MINUTE
    for i in range(1, 11):  # 10 records, 1 to 10 minutes old
        await journal.open(_record(now - i * MINUTE))
    cache = HistoryCache(max_records=8)
    calls, read, complete_from = await cache.calls(journal, window, now)
    assert (len(calls), complete_from) == (8, now - 8 * MINUTE - (now % MINUTE))
    await journal.open(_record(now + 1000))
    await journal.open(_record(now + 2000))
    calls, read, complete_from = await cache.calls(journal, window, now + 3000)
    # 7 records from the boundary (5 minutes back) on re-read, room for the newest old one
    assert (len(calls), read, cache.last_read, complete_from) == (8, 8, 7, now - 6 * MINUTE)
    assert min(c.created_at for c in calls) == complete_from


async def test_open_payments_by_state(journal: RedisJournal) -> None:
    pending = _record(T0, state=State.CLAIMED, charged=0, amount=700)
    await journal.open(pending)
    await journal.advance(replace(pending, state=State.SERVING), [State.CLAIMED])
    await journal.advance(replace(pending, state=State.SETTLING), [State.SERVING])
    await journal.advance(replace(pending, state=State.PENDING, reason="timeout"), [State.SETTLING])
    await journal.open(_record(T0 + 1, state=State.CLAIMED, charged=0, amount=300))
    doc = await open_payments(journal, now_ms=T0 + 10_000)
    assert doc["states"] == {"claimed": {"count": 1, "amount": "300"}, "pending": {"count": 1, "amount": "700"}}
    assert [(o["state"], o["amount"], o["age_s"], o["reason"]) for o in doc["oldest"]] == [
        ("pending", "700", 10, "timeout")
    ]
    assert doc["complete"]


def test_quantile_interpolates_like_promql() -> None:
    buckets = [(0.1, 10.0), (0.5, 30.0), (1.0, 40.0), (float("inf"), 40.0)]
    assert quantile(0.25, buckets) == pytest.approx(0.1 * 10 / 10)
    assert quantile(0.5, buckets) == pytest.approx(0.1 + 0.4 * (20 - 10) / 20)
    assert quantile(0.99, buckets) == pytest.approx(0.5 + 0.5 * (39.6 - 30) / 10)
    assert quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None
    assert quantile(0.99, [(0.1, 1.0), (float("inf"), 10.0)]) == 0.1  # in +Inf: the highest finite bound


def _registry() -> tuple[CollectorRegistry, dict[str, Any]]:
    reg = CollectorRegistry()
    families = {
        "calls": Counter("payrouter_split_calls", "", ["rule", "arm", "model"], registry=reg),
        "seconds": Histogram("payrouter_split_seconds", "", ["rule", "arm"], buckets=(0.1, 1.0), registry=reg),
        "revenue": Counter("payrouter_split_revenue_atomic", "", ["rule", "arm"], registry=reg),
        "feedback": Counter("payrouter_feedback", "", ["model", "arm", "rating"], registry=reg),
        "paid": Counter("payrouter_paid_calls", "", ["scheme", "model"], registry=reg),
        "upstream": Histogram(
            "payrouter_upstream_seconds", "", ["provider", "model"], buckets=(0.1, 1.0), registry=reg
        ),
    }
    return reg, families


def test_split_arms_side_by_side() -> None:
    reg, f = _registry()
    assert split_arms(read_registry(reg)) == []
    calls, seconds, revenue, feedback = f["calls"], f["seconds"], f["revenue"], f["feedback"]
    assert isinstance(calls, Counter) and isinstance(seconds, Histogram)
    assert isinstance(revenue, Counter) and isinstance(feedback, Counter)
    calls.labels(rule="0", arm="trial", model="new").inc(2)
    calls.labels(rule="0", arm="control", model="old").inc(18)
    calls.labels(rule="", arm="", model="old").inc(5)  # no split applied: not an arm
    for _ in range(18):
        seconds.labels(rule="0", arm="control").observe(0.05)
    seconds.labels(rule="0", arm="trial").observe(0.5)
    seconds.labels(rule="0", arm="trial").observe(0.5)
    revenue.labels(rule="0", arm="control").inc(1800)
    revenue.labels(rule="0", arm="trial").inc(300)
    feedback.labels(model="new", arm="trial", rating="up").inc()
    feedback.labels(model="new", arm="trial", rating="down").inc(3)
    (rule,) = split_arms(read_registry(reg))
    assert rule["rule"] == "0"
    control, trial = rule["arms"]
    assert (control["arm"], control["calls"], control["models"], control["revenue"]) == (
        "control",
        18,
        {"old": 18},
        "1800",
    )
    assert (trial["arm"], trial["calls"], trial["models"], trial["revenue"]) == ("trial", 2, {"new": 2}, "300")
    assert control["latency"]["count"] == 18 and control["latency"]["p50_ms"] < trial["latency"]["p50_ms"]
    assert trial["feedback"] == {"down": 3, "up": 1} and control["feedback"] == {}


def test_current_state_per_model() -> None:
    reg, f = _registry()
    paid, upstream = f["paid"], f["upstream"]
    assert isinstance(paid, Counter) and isinstance(upstream, Histogram)
    paid.labels(scheme="exact", model="a").inc(3)
    paid.labels(scheme="batch-settlement", model="a").inc(2)
    upstream.labels(provider="p", model="a").observe(0.05)
    state = current_state(read_registry(reg))
    assert state["totals"]["paid_calls"] == 5
    assert state["totals"]["paid_by_scheme"] == {"batch-settlement": 2, "exact": 3}
    (model,) = state["models"]
    assert model["model"] == "a" and model["calls"] == 5 and model["latency"]["count"] == 1
    assert model["first_byte"] is None and model["revenue"] == "0"
