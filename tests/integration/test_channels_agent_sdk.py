"""payrouter's own agent SDK pays by channel: deposit, 50 calls charged by the token, refund.

The chain is the judge: the payer spent exactly what the receipts say was charged, and the
channel's claims equal it; the budget counted the deposit and got the refund back.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx

from payrouter.client import (
    ChannelOptions,
    FileChannelStore,
    MemoryBudgetStore,
    PaymentTransport,
    SpendingPolicy,
    receipt_of,
    refund_channel,
)
from payrouter.sandbox.dev import Sandbox
from pricing import charge_for_usage
from wallets import LocalSigner

from .claims import claim_pass
from .conftest import Observer

CALLS = 50


def test_agent_sdk_pays_by_channel_and_refunds(box: Sandbox, observer: Observer, tmp_path: Path) -> None:
    payer = LocalSigner.generate()
    box.token.mint(payer.address, 20_000_000)
    store = FileChannelStore(tmp_path / "channels")
    budget = MemoryBudgetStore()
    policy = SpendingPolicy(max_per_call=200_000, per_day=10_000_000)
    transport = PaymentTransport(
        payer,
        policy,
        budget,
        channels=ChannelOptions(store=store, rpc_url=box.chain.rpc_url),
        scheme="batch-settlement",
    )
    url = f"{box.router_url}/v1/chat/completions"
    claim_pass(box)  # whatever earlier tests left is claimed and settled now, not below
    before = box.token.balance_of(payer.address)
    operator_before = box.token.balance_of(box.operator.address)
    charges = []
    channel_id = ""
    deposits = 0
    with httpx.Client(transport=transport, timeout=30) as http:
        for i in range(CALLS):
            body = {
                "model": "claude-sonnet-4",
                "max_tokens": [16, 64, 256, 1024][i % 4],
                "messages": [{"role": "user", "content": f"{secrets.token_hex(2)} " + "more words " * (40 * (i % 5))}],
            }
            response = http.post(url, json=body)
            assert response.status_code == 200, response.text
            receipt = receipt_of(response)
            assert receipt is not None and receipt.scheme == "batch-settlement" and receipt.charged is not None
            usage = response.json()["usage"]
            assert (
                receipt.charged
                == charge_for_usage(
                    box.table,
                    usage["payrouter"]["answered_by"],
                    usage["prompt_tokens"],
                    usage["completion_tokens"],
                    cap=receipt.amount,
                ).amount
            )
            charges.append(receipt.charged)
            channel_id = receipt.channel_id or channel_id
            deposits += receipt.deposit
    assert deposits > 0 and len(set(charges)) > 1
    assert before - box.token.balance_of(payer.address) == deposits  # only the deposit left the wallet
    assert box.token.balance_of(box.operator.address) == operator_before  # nothing settled per call
    report = claim_pass(box)  # the claimer claims the channel's charges and sweeps them to pay_to
    assert report.claimed == sum(charges) == report.settled and len(report.claim_txs) == 1
    assert box.token.balance_of(box.operator.address) - operator_before == sum(charges)

    result = refund_channel(payer, url, store, budget=budget)
    assert result.channel_id == channel_id and result.amount == deposits - sum(charges)
    assert before - box.token.balance_of(payer.address) == sum(charges)  # spent exactly what was charged
    assert claim_pass(box).claimed == 0  # nothing was left to claim
