"""Unpaid work: a client that only asks for quotes is held to its rate, a paying one is not,
and a flood of distinct unpaid requests writes nothing to the store."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import redis
from pydantic import SecretStr
from starlette.testclient import TestClient

from payrouter.app import create_app
from payrouter.sandbox.dev import EXAMPLE_TABLE
from payrouter.sandbox.serving import serve_in_thread
from payrouter.sandbox.upstream import TestUpstream
from payrouter.settings import ProviderSettings, ServerSettings, Settings
from payrouter.settlement_backend import SettlementBackend
from payrouter.x402.unpaid_limit import UnpaidLimit
from pricing import load_price_table
from tests.integration.payments import header, payment
from tests.redis_keys import delete_namespace, run_token
from tests.x402.fake_facilitator import FakeFacilitator
from wallets import LocalSigner

ASSET = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
REDIS_URL = "redis://127.0.0.1:6379/0"


def test_a_bucket_allows_its_burst_then_its_rate() -> None:
    limit = UnpaidLimit(rate=2.0, burst=3)
    assert [limit.take("a", now=100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limit.take("a", now=100.0) == pytest.approx(0.5)  # one token in half a second
    assert limit.take("b", now=100.0) == 0.0  # another client has its own bucket
    assert limit.take("a", now=100.5) == 0.0
    assert limit.take("a", now=100.5) > 0
    assert limit.take("a", now=200.0) == 0.0  # refilled, never beyond the burst
    assert [limit.take("a", now=200.0) for _ in range(3)][-1] > 0


def test_a_payment_gives_its_quote_back() -> None:
    limit = UnpaidLimit(rate=0.001, burst=2)
    for _ in range(100):  # quote, pay, quote, pay...: never limited
        assert limit.take("payer", now=5.0) == 0.0
        limit.give_back("payer", now=5.0)
    assert limit.take("payer", now=5.0) == 0.0
    assert limit.take("payer", now=5.0) == 0.0
    assert limit.take("payer", now=5.0) > 0
    limit.give_back("payer", now=5.0)
    limit.give_back("payer", now=5.0)
    limit.give_back("payer", now=5.0)  # never above the burst
    assert [limit.take("payer", now=5.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(1000.0)]


def test_the_least_recently_seen_client_is_forgotten_first() -> None:
    limit = UnpaidLimit(rate=1.0, burst=1, max_clients=2)
    assert limit.take("a", now=0.0) == 0.0
    assert limit.take("b", now=0.0) == 0.0
    assert limit.take("a", now=0.0) > 0  # a is now the most recent
    assert limit.take("c", now=0.0) == 0.0  # b is forgotten: a full bucket next time
    assert limit.take("b", now=0.0) == 0.0
    assert limit.take("a", now=0.0) == 0.0  # and so a, pushed out by b


@pytest.mark.parametrize("args", [(0, 1), (-1, 1), (1, 0)])
def test_bad_limits_are_refused(args: tuple[float, int]) -> None:
    with pytest.raises(ValueError):
        UnpaidLimit(*args)


@pytest.fixture(scope="module")
def upstream_url() -> Iterator[str]:
    with serve_in_thread(TestUpstream().app) as url:
        yield url


def _settings(upstream_url: str, **server: Any) -> Settings:
    table = load_price_table(EXAMPLE_TABLE).on_chain("eip155:31337", ASSET, LocalSigner.generate().address)
    return Settings(
        price_table=table,
        providers={p: ProviderSettings(base_url=f"{upstream_url}/v1") for p in {m.provider for m in table.models}},
        rpc_url="http://127.0.0.1:9",  # unused: the backend is given
        gas_key=SecretStr("0x" + "11" * 32),
        reconcile_interval=0,
        server=ServerSettings(**server),
    )


def _body(text: str = "hi") -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "max_tokens": 40, "messages": [{"role": "user", "content": text}]}


def test_a_client_that_only_asks_is_told_to_wait_and_a_payer_is_not(upstream_url: str) -> None:
    settings = _settings(upstream_url, unpaid_rate=0.01, unpaid_burst=3)
    app = create_app(settings, backend=SettlementBackend(None, FakeFacilitator()))
    url = "/v1/chat/completions"
    with TestClient(app) as client:
        for _ in range(3):
            assert client.post(url, json=_body()).status_code == 402
        limited = client.post(url, json=_body())
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.json()["error"]["type"] == "rate_limit_error"
        assert client.post("/v1/quote", json=_body()).status_code == 429
        # a garbage payment is unpaid work too, and is refused as such (with its reason)
        garbage = client.post(url, json=_body(), headers={"PAYMENT-SIGNATURE": "bm90IGpzb24="})
        assert garbage.status_code == 429 and "payment refused" in garbage.json()["error"]["message"]
        # with a malformed request too: its 400 would come after the payment's checks
        malformed = {**_body(), "messages": "not a list"}
        garbage = client.post(url, json=malformed, headers={"PAYMENT-SIGNATURE": "bm90IGpzb24="})
        assert garbage.status_code == 429 and "payment refused" in garbage.json()["error"]["message"]
    with TestClient(create_app(settings, backend=SettlementBackend(None, FakeFacilitator()))) as client:
        agent = LocalSigner.generate()
        for i in range(10):  # a paying client: each payment gives its quote's token back
            offer = client.post(url, json=_body(f"q{i}"))
            assert offer.status_code == 402, offer.text
            required = offer.json()
            paid = client.post(url, json=_body(f"q{i}"), headers=header(payment(required, agent)))
            assert paid.status_code == 200, paid.text


def _keys(r: redis.Redis, namespace: str) -> list[str]:
    return sorted(k.decode() for k in r.scan_iter(match=f"{namespace}:*", count=1000))


def test_a_flood_of_distinct_unpaid_requests_writes_nothing_to_the_store(upstream_url: str) -> None:
    namespace = f"payrouter-test-unpaid-{run_token()}"
    settings = _settings(upstream_url, unpaid_rate=0).model_copy(
        update={"redis_url": REDIS_URL, "namespace": namespace}
    )
    app = create_app(settings, backend=SettlementBackend(None, FakeFacilitator()))
    try:
        with serve_in_thread(app) as base, redis.Redis.from_url(REDIS_URL) as r:
            with httpx.Client(timeout=10) as http:
                assert http.post(f"{base}/v1/chat/completions", json=_body()).status_code == 402
            before = _keys(r, namespace)
            assert all(":quote-key:" in k for k in before)

            def burst(n: int) -> list[int]:
                with httpx.Client(timeout=10) as http:
                    return [
                        http.post(f"{base}/v1/chat/completions", json=_body(secrets.token_hex(16))).status_code
                        for _ in range(n)
                    ]

            with ThreadPoolExecutor(4) as pool:
                statuses = [s for chunk in pool.map(burst, [500] * 4) for s in chunk]
            assert statuses == [402] * 2000
            assert _keys(r, namespace) == before  # 2,000 quotes handed out, none kept
    finally:
        delete_namespace(REDIS_URL, namespace)
