"""Interoperability: the official x402 Python client pays payrouter unmodified."""

from __future__ import annotations

import asyncio
import base64
import json

from eth_account import Account
from x402 import x402Client
from x402.http.clients import x402HttpxClient
from x402.mechanisms.evm.exact import ExactEvmClientScheme

from payrouter.sandbox.dev import Sandbox

from .conftest import Observer

BODY = {"model": "gpt-4o", "max_tokens": 200, "messages": [{"role": "user", "content": "Explain x402 briefly."}]}


def _client(box: Sandbox, key: str) -> x402Client:
    client = x402Client()
    client.register("eip155:*", ExactEvmClientScheme(Account.from_key(key)))
    client.set_spend_controls(
        {
            "allowed_assets": [
                {"network": box.chain.network, "asset": box.token.address, "max_amount_per_payment": "1000000"}
            ]
        }
    )
    return client


def test_official_x402_httpx_client_pays(box: Sandbox, observer: Observer) -> None:
    agent = box.agents[0]
    payee = box.operator.address
    quote = observer.http.post(f"{box.router_url}/v1/quote", json=BODY).json()
    amount = int(quote["price"]["amount"])
    before_payer, before_payee = observer.balances(agent.address, payee)

    async def pay() -> tuple[int, dict[str, str], dict[str, object]]:
        async with x402HttpxClient(_client(box, agent.unsafe_export_private_key()), timeout=30) as http:
            response = await http.post(f"{box.router_url}/v1/chat/completions", json=BODY)
            return response.status_code, dict(response.headers), response.json()

    status, headers, body = asyncio.run(pay())
    assert status == 200, body
    receipt = json.loads(base64.b64decode(headers["payment-response"]))
    assert receipt["success"] is True
    assert receipt["transaction"].startswith("0x") and len(receipt["transaction"]) == 66
    assert receipt["payer"] == agent.address and receipt["network"] == box.chain.network
    after_payer, after_payee = observer.balances(agent.address, payee)
    assert after_payee - before_payee == amount
    assert before_payer - after_payer == amount
    assert headers["x-payrouter-model"] == "gpt-4o" and headers["x-payrouter-charge"] == str(amount)
    assert body["usage"]["payrouter"]["charged"] == str(amount)  # type: ignore[index]
    tx = box.chain.w3.eth.get_transaction_receipt(receipt["transaction"])
    assert tx["status"] == 1
