"""x402 v1 clients (X-PAYMENT, JSON body offers) on a chain that has a v1 name."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator

import httpx
import pytest

from payrouter.sandbox.dev import Sandbox
from payrouter.x402.wire import encode_header
from tests.sandbox_thread import sandbox_in_thread
from wallets import Eip712Domain, TransferWithAuthorization, new_nonce, sign_authorization

BODY = {"model": "auto", "max_tokens": 40, "messages": [{"role": "user", "content": "v1 please"}]}


@pytest.fixture(scope="module")
def base_sepolia() -> Iterator[Sandbox]:
    with sandbox_in_thread(agents=1, chain_id=84532) as box:
        yield box


def _v1_payment(box: Sandbox, accept: dict[str, object], network: str = "base-sepolia") -> str:
    agent = box.agents[0]
    auth = TransferWithAuthorization(
        agent.address,
        str(accept["payTo"]),
        int(str(accept["maxAmountRequired"])),
        0,
        int(time.time()) + 60,
        new_nonce(),
    )
    signature = sign_authorization(agent, box.token.domain, auth)
    return encode_header(
        {
            "x402Version": 1,
            "scheme": "exact",
            "network": network,
            "payload": {"signature": "0x" + signature.hex(), "authorization": auth.to_wire()},
        }
    )


def test_v1_offer_and_payment(base_sepolia: Sandbox) -> None:
    box = base_sepolia
    url = f"{box.router_url}/v1/chat/completions"
    assert box.token.domain == Eip712Domain("USD Coin", "2", 84532, box.token.address)
    with httpx.Client(timeout=30) as http:
        unpaid = http.post(url, json=BODY)
        assert unpaid.status_code == 402
        v1 = unpaid.json()
        assert v1["x402Version"] == 1 and v1["error"] == "PAYMENT-SIGNATURE header is required"
        accept = v1["accepts"][0]
        assert accept["network"] == "base-sepolia" and accept["resource"] == url
        v2 = json.loads(base64.b64decode(unpaid.headers["PAYMENT-REQUIRED"]))
        assert accept["maxAmountRequired"] == v2["accepts"][0]["amount"]
        amount = int(accept["maxAmountRequired"])
        before = box.token.balance_of(box.operator.address)
        paid = http.post(url, json=BODY, headers={"X-PAYMENT": _v1_payment(box, accept)})
        assert paid.status_code == 200, paid.text
        receipt = json.loads(base64.b64decode(paid.headers["X-PAYMENT-RESPONSE"]))
        assert receipt["success"] is True and receipt["network"] == "base-sepolia"
        assert "payment-response" not in paid.headers
        assert box.token.balance_of(box.operator.address) - before == amount

        wrong = http.post(url, json=BODY, headers={"X-PAYMENT": _v1_payment(box, accept, network="base")})
        assert wrong.status_code == 402 and wrong.json()["error"] == "invalid_network"


class V1OnlyServer(httpx.BaseTransport):
    """Real HTTP to payrouter, minus the v2 header: what a v1-only server's 402 looks like."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if response.status_code == 402:
            response.read()
            headers = [(k, v) for k, v in response.headers.raw if k.lower() != b"payment-required"]
            return httpx.Response(402, headers=headers, content=response.content, request=request)
        return response

    def close(self) -> None:
        self.inner.close()


def test_sdk_pays_a_v1_offer(base_sepolia: Sandbox) -> None:
    from payrouter.client import PaymentTransport, SpendingPolicy, receipt_of

    box = base_sepolia
    transport = PaymentTransport(box.agents[0], SpendingPolicy(max_per_call=10**6), transport=V1OnlyServer())
    before = box.token.balance_of(box.operator.address)
    with httpx.Client(transport=transport) as http:
        response = http.post(f"{box.router_url}/v1/chat/completions", json={**BODY, "max_tokens": 41})
    assert response.status_code == 200, response.text
    assert "x-payment-response" in response.headers
    receipt = receipt_of(response)
    assert receipt is not None and receipt.success and receipt.network == "base-sepolia"
    assert box.token.balance_of(box.operator.address) - before == receipt.amount
