"""The official x402 Python client pays payrouter through a payment channel (batch-settlement).

Both of its schemes are registered and batch is preferred: the first call deposits, the next
ones carry vouchers, each charged the price of the tokens it used; then a refund. The chain
is the judge: the payer spent exactly the sum of the charges, and the channel's claims equal it.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import httpx
from eth_account import Account
from x402 import prefer_scheme, x402Client
from x402.http.clients import x402HttpxClient
from x402.mechanisms.evm.batch_settlement.client import (
    BatchSettlementEvmScheme,
    BatchSettlementEvmSchemeOptions,
    FileChannelStorageOptions,
    FileClientChannelStorage,
    RefundOptions,
)
from x402.mechanisms.evm.exact import ExactEvmClientScheme
from x402.mechanisms.evm.signers import EthAccountSignerWithRPC

from payrouter.chain import ChainClient
from payrouter.channels.contract import BatchSettlementContract
from payrouter.sandbox.dev import Sandbox
from pricing import PriceTable, charge_for_usage
from wallets import LocalSigner

from .claims import claim_pass

CALLS = 50


def _receipt(headers: httpx.Headers) -> dict[str, Any]:
    value = headers.get("payment-response")
    assert value, "no PAYMENT-RESPONSE"
    obj: dict[str, Any] = json.loads(base64.b64decode(value))
    return obj


def usage_price(table: PriceTable, usage: dict[str, Any]) -> int:
    """The price of the tokens an answer's ``usage`` reports, capped at its quote."""
    return charge_for_usage(
        table,
        usage["payrouter"]["answered_by"],
        usage["prompt_tokens"],
        usage["completion_tokens"],
        cap=int(usage["payrouter"]["quoted"]),
    ).amount


def _official_client(box: Sandbox, payer: LocalSigner, state_dir: Path) -> tuple[x402Client, BatchSettlementEvmScheme]:
    account = Account.from_key(payer.unsafe_export_private_key())
    batch = BatchSettlementEvmScheme(
        EthAccountSignerWithRPC(account, box.chain.rpc_url),
        BatchSettlementEvmSchemeOptions(
            storage=FileClientChannelStorage(FileChannelStorageOptions(directory=str(state_dir)))
        ),
    )
    client = x402Client()
    client.register("eip155:*", ExactEvmClientScheme(account))
    client.register("eip155:*", batch)
    client.register_policy(prefer_scheme("batch-settlement"))
    client.set_spend_controls(
        {
            "allowed_assets": [
                {"network": box.chain.network, "asset": box.token.address, "max_amount_per_payment": "5000000"}
            ]
        }
    )
    return client, batch


async def _channel_totals(box: Sandbox, channel_id: str) -> tuple[int, int]:
    chain = ChainClient(box.chain.rpc_url)
    try:
        contract = BatchSettlementContract(chain, None, box.chain.chain_id)
        raw = bytes.fromhex(channel_id[2:])
        onchain = (await contract.channels([raw]))[raw]
        return onchain.balance, onchain.total_claimed
    finally:
        await chain.close()


def test_official_client_pays_by_channel_and_is_charged_the_tokens_used(box: Sandbox, tmp_path: Path) -> None:
    payer = LocalSigner.generate()
    box.token.mint(payer.address, 20_000_000)
    client, batch = _official_client(box, payer, tmp_path / "channels")
    url = f"{box.router_url}/v1/chat/completions"
    charges: list[int] = []
    channel_id = ""

    async def calls() -> None:
        nonlocal channel_id
        async with x402HttpxClient(client, timeout=30) as http:
            for i in range(CALLS):
                max_tokens = [8, 40, 200, 1000, 4096][i % 5]
                body = {
                    "model": "gpt-4o",
                    "max_tokens": max_tokens,
                    "messages": [{"role": "user", "content": f"call {i}: " + "tell me more " * (60 * (i % 7))}],
                }
                response = await http.post(url, json=body)
                assert response.status_code == 200, response.text
                receipt = _receipt(response.headers)
                assert receipt["success"] is True
                charged = int(receipt["extra"]["chargedAmount"])
                state = receipt["extra"]["channelState"]
                channel_id = state["channelId"]
                report = response.json()["usage"]
                # every charge is the price of the tokens the upstream reported, within the quote
                expected = usage_price(box.table, report)
                assert charged == expected == int(report["payrouter"]["charged"])
                charges.append(charged)
                assert int(state["chargedCumulativeAmount"]) == sum(charges)

    claim_pass(box)  # whatever earlier tests left is claimed and settled now, not below
    before = box.token.balance_of(payer.address)
    operator_before = box.token.balance_of(box.operator.address)
    asyncio.run(calls())
    assert len(set(charges)) > 1, "the charges should follow the tokens used, not one flat quote"
    balance, claimed = asyncio.run(_channel_totals(box, channel_id))
    deposited = before - box.token.balance_of(payer.address)
    assert balance == deposited > sum(charges) and claimed == 0  # nothing on chain per call

    settled = batch.refund(f"{box.router_url}/v1/chat/completions", RefundOptions())
    assert settled.success
    balance, claimed = asyncio.run(_channel_totals(box, channel_id))
    spent = before - box.token.balance_of(payer.address)
    assert spent == sum(charges)  # deposit minus refund: exactly what was charged
    assert claimed == sum(charges) == balance  # the refund claimed our charges in the same transaction
    report = claim_pass(box)  # the claimer sweeps what was claimed to pay_to
    assert report.settled == sum(charges)
    assert box.token.balance_of(box.operator.address) - operator_before == sum(charges)
