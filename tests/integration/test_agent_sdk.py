"""The agent SDK against the sandbox and against a server no one here wrote."""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path

import httpx
import openai
import pytest

from payrouter.client import (
    AsyncPaymentTransport,
    FileBudgetStore,
    PaymentRefused,
    PaymentTransport,
    SpendingPolicy,
    receipt_of,
)
from payrouter.sandbox.dev import Sandbox
from payrouter.sandbox.serving import serve_in_thread
from wallets import LocalSigner

from .conftest import Observer
from .official_server import official_app


def _agent(box: Sandbox, amount: int = 5_000_000) -> LocalSigner:
    agent = LocalSigner.generate()
    box.token.mint(agent.address, amount)
    return agent


def _prompt() -> list[dict[str, str]]:
    return [{"role": "user", "content": f"hello {secrets.token_hex(4)}"}]


def test_openai_sdk_pays_through_our_transport(box: Sandbox, observer: Observer) -> None:
    agent = _agent(box)
    transport = PaymentTransport(agent, SpendingPolicy(max_per_call=100_000))
    before = observer.balances(agent.address, box.operator.address)
    with (
        httpx.Client(transport=transport) as http_client,
        # openai 3 annotates httpx2.Client; an httpx.Client with our transport works as is
        openai.OpenAI(base_url=f"{box.router_url}/v1", api_key="unused", http_client=http_client) as client,  # type: ignore[arg-type]
    ):
        raw = client.chat.completions.with_raw_response.create(model="auto", messages=_prompt(), max_tokens=50)  # type: ignore[arg-type]
        completion = raw.parse()
    assert completion.choices[0].message.content
    receipt = receipt_of(raw.http_response)  # type: ignore[arg-type]
    assert receipt is not None and receipt.success and receipt.transaction.startswith("0x")
    after = observer.balances(agent.address, box.operator.address)
    assert (before[0] - after[0], after[1] - before[1]) == (receipt.amount, receipt.amount)
    assert completion.model == raw.headers["x-payrouter-model"]


def test_budgets_refuse_before_signing(box: Sandbox, observer: Observer, tmp_path: Path) -> None:
    agent = _agent(box)
    url = f"{box.router_url}/v1/chat/completions"
    body = {"model": "auto", "messages": _prompt(), "max_tokens": 50}
    price = int(httpx.post(f"{box.router_url}/v1/quote", json=body).json()["price"]["amount"])
    calls = observer.upstream_calls()
    with httpx.Client(transport=PaymentTransport(agent, SpendingPolicy(max_per_call=price - 1))) as http:
        with pytest.raises(PaymentRefused, match=f"exceeds max_per_call {price - 1} by 1") as info:
            http.post(url, json=body)
    assert info.value.limit == "max_per_call" and info.value.requested == price
    assert observer.upstream_calls() == calls and observer.balances(agent.address) == [5_000_000]

    # an hourly budget of two calls, kept in a file: the third call is refused, also by a new process
    spend = tmp_path / "spend.json"
    policy = SpendingPolicy(per_hour=2 * price + price // 2)
    with httpx.Client(transport=PaymentTransport(agent, policy, FileBudgetStore(spend))) as http:
        for _ in range(2):
            assert http.post(url, json={**body, "messages": _prompt()}).status_code == 200
        paid_so_far = observer.balances(agent.address)[0]
        with pytest.raises(PaymentRefused, match="per_hour budget") as info:
            http.post(url, json={**body, "messages": _prompt()})
        assert info.value.allowed is not None and info.value.allowed < price
    with httpx.Client(transport=PaymentTransport(agent, policy, FileBudgetStore(spend))) as http:
        with pytest.raises(PaymentRefused, match="per_hour"):
            http.post(url, json={**body, "messages": _prompt()})
    assert observer.balances(agent.address)[0] == paid_so_far


def test_allow_lists(box: Sandbox) -> None:
    agent = _agent(box)
    body = {"model": "auto", "messages": _prompt()}
    for policy, limit in [
        (SpendingPolicy(networks=frozenset({"eip155:8453"})), "network"),
        (SpendingPolicy(assets=frozenset({LocalSigner.generate().address})), "asset"),
        (SpendingPolicy(payees=frozenset({LocalSigner.generate().address})), "payee"),
    ]:
        with httpx.Client(transport=PaymentTransport(agent, policy)) as http, pytest.raises(PaymentRefused) as info:
            http.post(f"{box.router_url}/v1/chat/completions", json=body)
        assert info.value.limit == limit


class LoseFirstPaidResponse(httpx.BaseTransport):
    """Real HTTP, but the first paid response never reaches the client (a dropped connection)."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.dropped = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if "payment-signature" in request.headers and not self.dropped:
            response.read()
            self.dropped += 1
            raise httpx.ReadError("connection reset after the request was served", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


def test_retry_after_a_lost_response_pays_once(box: Sandbox, observer: Observer) -> None:
    agent = _agent(box)
    network = LoseFirstPaidResponse()
    body = {"model": "auto", "messages": _prompt(), "max_tokens": 30}
    before = observer.balances(agent.address)[0]
    with httpx.Client(transport=PaymentTransport(agent, SpendingPolicy(max_per_call=10**6), transport=network)) as http:
        with pytest.raises(httpx.ReadError):
            http.post(f"{box.router_url}/v1/chat/completions", json=body)
        paid_once = observer.balances(agent.address)[0]
        assert paid_once < before  # the first attempt was served and settled
        retry = http.post(f"{box.router_url}/v1/chat/completions", json=body)
    assert retry.status_code == 200, retry.text
    receipt = receipt_of(retry)
    assert receipt is not None and receipt.success
    assert observer.balances(agent.address)[0] == paid_once  # the retry did not pay again
    assert before - paid_once == receipt.amount


def test_async_transport(box: Sandbox) -> None:
    agent = _agent(box)

    async def call() -> httpx.Response:
        async with httpx.AsyncClient(
            transport=AsyncPaymentTransport(agent, SpendingPolicy(max_per_call=10**6))
        ) as http:
            return await http.post(
                f"{box.router_url}/v1/chat/completions", json={"model": "auto", "messages": _prompt()}
            )

    response = asyncio.run(call())
    assert response.status_code == 200
    receipt = receipt_of(response)
    assert receipt is not None and receipt.success


def test_pays_the_official_x402_middleware(box: Sandbox, observer: Observer) -> None:
    agent = _agent(box)
    seller = LocalSigner.generate()
    app = official_app(
        box.chain.rpc_url, box.chain.new_account().unsafe_export_private_key(), box.chain.network, box.token.address,
        seller.address, 1234,
    )  # fmt: skip
    with (
        serve_in_thread(app) as url,
        httpx.Client(transport=PaymentTransport(agent, SpendingPolicy(max_per_call=5000))) as http,
    ):
        response = http.get(f"{url}/weather")
        assert response.status_code == 200, response.text
        assert response.json() == {"forecast": "sunny", "temperature_c": 21}
        receipt = receipt_of(response)
        assert receipt is not None and receipt.success and receipt.amount == 1234
    assert observer.balances(seller.address) == [1234]


def test_payment_identifier_conflicts(box: Sandbox, observer: Observer) -> None:
    from payrouter.client import read_offer, sign_offer
    from payrouter.x402.wire import decode_header, encode_header

    agent = _agent(box)
    url = f"{box.router_url}/v1/chat/completions"
    body = {"model": "auto", "messages": _prompt()}
    offer = read_offer(httpx.post(url, json=body).headers)
    first = sign_offer(offer, agent, SpendingPolicy())
    assert first.payment_id is not None
    ok = httpx.post(url, json=body, headers={first.header_name: first.header_value})
    assert ok.status_code == 200
    # the same id on a different payment (a fresh authorization) is a conflict, and charges nothing
    second = decode_header(sign_offer(offer, agent, SpendingPolicy()).header_value)
    second["extensions"]["payment-identifier"]["info"]["id"] = first.payment_id
    before = observer.balances(agent.address)
    conflict = httpx.post(url, json=body, headers={"PAYMENT-SIGNATURE": encode_header(second)})
    assert conflict.status_code == 409 and "already used" in conflict.json()["error"]["message"]
    # the same payment again: the first response, unchanged, no charge
    again = httpx.post(url, json=body, headers={first.header_name: first.header_value})
    assert again.status_code == 200 and again.json() == ok.json()
    assert json.loads(__import__("base64").b64decode(again.headers["payment-response"])) == json.loads(
        __import__("base64").b64decode(ok.headers["payment-response"])
    )
    assert observer.balances(agent.address) == before
