"""Spending policies and budget stores (file and a real Redis)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from payrouter.client import FileBudgetStore, MemoryBudgetStore, PaymentRefused, RedisBudgetStore, SpendingPolicy
from payrouter.client.policy import BudgetStore
from tests.redis_keys import run_token

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(params=["memory", "file", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BudgetStore]:
    if request.param == "memory":
        yield MemoryBudgetStore()
    elif request.param == "file":
        yield FileBudgetStore(tmp_path / "spend.json")
    else:
        key = f"payrouter-test-spend-{run_token()}"
        yield RedisBudgetStore(REDIS_URL, key)
        with redis.Redis.from_url(REDIS_URL) as r:
            r.delete(key)


def test_rolling_budgets(store: BudgetStore) -> None:
    windows = SpendingPolicy(per_hour=1000, per_day=1500).windows()
    first = store.reserve(600, windows)
    store.reserve(300, windows)
    with pytest.raises(PaymentRefused) as info:
        store.reserve(200, windows)
    assert info.value.limit == "per_hour" and info.value.allowed == 100
    assert "900 of 1000 spent, 100 left (over by 100)" in str(info.value)
    store.release(first)  # a payment that was not taken gives its budget back
    store.reserve(650, windows)
    with pytest.raises(PaymentRefused) as info:
        store.reserve(600, SpendingPolicy(per_day=1500).windows())
    assert info.value.limit == "per_day"


def test_file_budget_is_shared_and_survives(tmp_path: Path) -> None:
    path = tmp_path / "spend.json"
    windows = SpendingPolicy(per_day=1000).windows()
    errors: list[PaymentRefused] = []

    def spend() -> None:
        try:
            FileBudgetStore(path).reserve(100, windows)
        except PaymentRefused as exc:
            errors.append(exc)

    threads = [threading.Thread(target=spend) for _ in range(15)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 5  # exactly ten reservations of 100 fit in 1000
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(PaymentRefused):
        FileBudgetStore(path).reserve(1, windows)
    path.write_text("{corrupt")
    FileBudgetStore(path).reserve(1, windows)  # a corrupt file starts over instead of blocking forever


def test_offer_checks() -> None:
    policy = SpendingPolicy(max_per_call=10, networks=frozenset({"eip155:1"}), assets=frozenset({"0xAbC"}), payees=None)
    policy.check_offer("eip155:1", "0xabc", "0xpay", 10)
    for args, limit in [
        (("eip155:2", "0xabc", "0xpay", 1), "network"),
        (("eip155:1", "0xdef", "0xpay", 1), "asset"),
        (("eip155:1", "0xabc", "0xpay", 11), "max_per_call"),
    ]:
        with pytest.raises(PaymentRefused) as info:
            policy.check_offer(*args)
        assert info.value.limit == limit
