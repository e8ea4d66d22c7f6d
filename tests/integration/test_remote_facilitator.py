"""The remote facilitator client against the official x402 facilitator over HTTP."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from payrouter.app import create_app
from payrouter.sandbox.dev import Sandbox
from payrouter.sandbox.serving import serve_in_thread
from payrouter.settings import ConfigError, ProviderSettings, Settings
from wallets import LocalSigner

from .conftest import Observer, exact_only
from .official_facilitator import facilitator_app
from .payments import header, offer, payment, rejection

TOKEN = "test-facilitator-token"


@pytest.fixture(scope="module")
def remote(box: Sandbox) -> Iterator[tuple[str, dict[str, int]]]:
    gas = box.chain.new_account()
    app, calls = facilitator_app(gas.unsafe_export_private_key(), box.chain.rpc_url, box.chain.network, TOKEN)
    with serve_in_thread(app) as url:
        yield url, calls


def _router(box: Sandbox, facilitator_url: str, token: str) -> Any:
    settings = Settings(
        price_table=exact_only(box.table),
        providers={
            p: ProviderSettings(base_url=f"{box.upstream_url}/v1") for p in {m.provider for m in box.table.models}
        },
        facilitator="remote",
        facilitator_url=facilitator_url,
        rpc_url=box.chain.rpc_url,
        facilitator_headers={"*": {"Authorization": SecretStr(f"Bearer {token}")}},
    )
    return create_app(settings)


def _body() -> dict[str, Any]:
    return {"model": "auto", "max_tokens": 50, "messages": [{"role": "user", "content": secrets.token_hex(6)}]}


def test_paid_call_settles_through_the_official_facilitator(
    box: Sandbox, remote: tuple[str, dict[str, int]], observer: Observer
) -> None:
    facilitator_url, calls = remote
    agent = box.agents[0]
    with serve_in_thread(_router(box, facilitator_url, TOKEN)) as router, httpx.Client(timeout=30) as http:
        url = f"{router}/v1/chat/completions"
        body = _body()
        o = offer(http, url, body)
        amount = int(o["accepts"][0]["amount"])
        before = observer.balances(agent.address, box.operator.address)
        response = http.post(url, json=body, headers=header(payment(o, agent)))
        assert response.status_code == 200, response.text
        after = observer.balances(agent.address, box.operator.address)
        assert (before[0] - after[0], after[1] - before[1]) == (amount, amount)
        assert calls["verify"] >= 1 and calls["settle"] >= 1 and calls["unauthorized"] == 0


def test_facilitator_rejection_reason_reaches_the_client(
    box: Sandbox, remote: tuple[str, dict[str, int]], observer: Observer
) -> None:
    facilitator_url, _ = remote
    broke = LocalSigner.generate()
    with serve_in_thread(_router(box, facilitator_url, TOKEN)) as router, httpx.Client(timeout=30) as http:
        url = f"{router}/v1/chat/completions"
        body = _body()
        o = offer(http, url, body)
        calls = observer.upstream_calls()
        response = http.post(url, json=body, headers=header(payment(o, broke)))
        status, reason = rejection(response)
        assert status == 402
        assert reason in ("invalid_exact_evm_insufficient_balance", "insufficient_funds")
        assert observer.upstream_calls() == calls


def test_wrong_facilitator_credentials_charge_nothing(
    box: Sandbox, remote: tuple[str, dict[str, int]], observer: Observer
) -> None:
    facilitator_url, calls = remote
    agent = box.agents[0]
    with serve_in_thread(_router(box, facilitator_url, "wrong")) as router, httpx.Client(timeout=30) as http:
        url = f"{router}/v1/chat/completions"
        body = _body()
        o = offer(http, url, body)
        before = observer.balances(agent.address, box.operator.address)
        upstream = observer.upstream_calls()
        response = http.post(url, json=body, headers=header(payment(o, agent)))
        assert rejection(response) == (402, "unexpected_verify_error")
        assert observer.upstream_calls() == upstream
        assert observer.balances(agent.address, box.operator.address) == before
        assert "wrong" not in response.text


async def test_startup_refuses_a_facilitator_for_another_network(box: Sandbox) -> None:
    gas = box.chain.new_account()
    app, calls = facilitator_app(gas.unsafe_export_private_key(), box.chain.rpc_url, "eip155:8453", TOKEN)
    with serve_in_thread(app) as url:
        router = _router(box, url, TOKEN)
        with pytest.raises(ConfigError, match=r"does not settle 'exact' payments on eip155:31337.*eip155:8453"):
            async with router.router.lifespan_context(router):
                pass
    assert calls["supported"] == 1


async def test_startup_checks_the_facilitator_it_will_use(box: Sandbox, remote: tuple[str, dict[str, int]]) -> None:
    facilitator_url, calls = remote
    before = calls["supported"]
    router = _router(box, facilitator_url, TOKEN)
    async with router.router.lifespan_context(router) as state:
        assert state["services"].facilitator is not None
    assert calls["supported"] == before + 1
