"""The demo: the sandbox plus an agent that makes a few paid calls, with both schemes.

``exact``: for each call it prints the route and price from the 402, then pays with a real
EIP-3009 authorization and prints the settlement transaction and both balances, and shows
that replaying a payment is refused.

``batch-settlement``: the agent opens a payment channel (one deposit on chain), makes a few
calls paid by vouchers, each charged the price of the tokens it used (not the quote), and
takes the rest back with a refund (which also claims what was charged, on chain).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from payrouter.client import (
    ChannelOptions,
    MemoryBudgetStore,
    MemoryChannelStore,
    PaymentTransport,
    SpendingPolicy,
    build_payment_header,
    read_offer,
    receipt_of,
    refund_channel,
)
from payrouter.sandbox.dev import EXAMPLE_TABLE, sandbox

__all__ = ["run_demo"]

REQUESTS = [
    {"model": "auto", "max_tokens": 128, "messages": [{"role": "user", "content": "What is x402, in one line?"}]},
    {
        "model": "gpt-4o",
        "max_tokens": 256,
        "messages": [
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": "Summarise EIP-3009 transferWithAuthorization in three sentences."},
        ],
    },
    {"model": "claude-3-5-haiku", "max_tokens": 64, "messages": [{"role": "user", "content": "Say hello."}]},
]


def _usd(amount: int, decimals: int) -> str:
    whole, frac = divmod(amount, 10**decimals)
    return f"${whole}.{frac:0{decimals}d}"


async def _demo(table_path: Path, out: Callable[[str], None]) -> int:
    started = time.perf_counter()
    async with sandbox(table_path, agents=1) as box, httpx.AsyncClient(timeout=30) as http:
        decimals = box.table.asset.decimals
        agent, token = box.agents[0], box.token
        url = f"{box.router_url}/v1/chat/completions"
        out(
            f"sandbox ready in {(time.perf_counter() - started) * 1000:.0f} ms: router {box.router_url}, chain {box.chain.network}"
        )
        out(f"token {token.address} ({token.domain.name} v{token.domain.version}), operator {box.operator.address}")
        out(f"agent {agent.address} holds {_usd(token.balance_of(agent.address), decimals)}")
        header = ""
        for body in REQUESTS:
            out("")
            unpaid = await http.post(url, json=body)
            if unpaid.status_code != 402:
                out(f"expected a 402, got {unpaid.status_code}: {unpaid.text}")
                return 1
            offer = read_offer(unpaid.headers).body
            req = offer["accepts"][0]
            route = req["extra"]["route"]
            out(
                f"ask    model={body['model']!r}: routed to {route['model']} ({route['reason']}), "
                f"~{route['inputTokens']} in + {route['maxOutputTokens']} out tokens"
            )
            out(f"quote  {req['amount']} atomic units = {_usd(int(req['amount']), decimals)} on {req['network']}")
            header, _ = build_payment_header(offer, agent, max_amount=10**decimals)
            t0 = time.perf_counter()
            paid = await http.post(url, json=body, headers={"PAYMENT-SIGNATURE": header})
            elapsed = (time.perf_counter() - t0) * 1000
            if paid.status_code != 200:
                out(f"paid call failed: {paid.status_code} {paid.text}")
                return 1
            receipt = json.loads(base64.b64decode(paid.headers["PAYMENT-RESPONSE"]))
            answer = paid.json()["choices"][0]["message"]["content"]
            out(
                f"paid   200 in {elapsed:.1f} ms; model {paid.headers['X-Payrouter-Model']}; charge {paid.headers['X-Payrouter-Charge']}"
            )
            out(f"tx     {receipt['transaction']}")
            out(f"answer {answer[:70]}...")
            out(
                f"funds  agent {_usd(token.balance_of(agent.address), decimals)}, "
                f"operator {_usd(token.balance_of(box.operator.address), decimals)}"
            )
        before = token.balance_of(agent.address)
        replay = await http.post(url, json=REQUESTS[-1], headers={"PAYMENT-SIGNATURE": header})
        same = json.loads(base64.b64decode(replay.headers["PAYMENT-RESPONSE"]))["transaction"] == receipt["transaction"]
        out("")
        out(
            f"replay of the last payment: {replay.status_code}, same receipt: {same}, "
            f"charged again: {before - token.balance_of(agent.address)} (payment-identifier)"
        )
        if replay.status_code != 200 or not same or token.balance_of(agent.address) != before:
            return 1
        code = await asyncio.to_thread(_channel_calls, box.router_url, box, out)
        if code:
            return code
    out("stopped the sandbox (router, upstream, anvil)")
    return 0


CHANNEL_REQUESTS = [
    ("gpt-4o", 4096, "Say hello."),
    ("gpt-4o", 1024, "What is a payment channel? " + "Explain it carefully. " * 60),
    ("claude-sonnet-4", 256, "Name one stablecoin."),
    ("claude-sonnet-4", 2048, "Why batch settlements? " + "Give the reasons. " * 120),
]


def _channel_calls(router_url: str, box: Any, out: Callable[[str], None]) -> int:
    """A few calls paid from a payment channel, then a refund (blocking: run in a thread)."""
    decimals = box.table.asset.decimals
    agent, token = box.agents[0], box.token
    url = f"{router_url}/v1/chat/completions"
    store = MemoryChannelStore()
    budget = MemoryBudgetStore()
    transport = PaymentTransport(
        agent,
        SpendingPolicy(max_per_call=10**decimals),
        budget,
        channels=ChannelOptions(store=store, rpc_url=box.chain.rpc_url),
        scheme="batch-settlement",
    )
    out("")
    out("batch-settlement: one deposit, then a voucher per call, charged the tokens used")
    before = token.balance_of(agent.address)
    channel = ""
    with httpx.Client(transport=transport, timeout=30) as http:
        total = 0
        for model, max_tokens, prompt in CHANNEL_REQUESTS:
            body = {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": prompt}]}
            t0 = time.perf_counter()
            paid = http.post(url, json=body)
            elapsed = (time.perf_counter() - t0) * 1000
            receipt = receipt_of(paid)
            if paid.status_code != 200 or receipt is None or receipt.charged is None:
                out(f"channel call failed: {paid.status_code} {paid.text}")
                return 1
            usage = paid.json()["usage"]
            total += receipt.charged
            deposit = f"; deposited {_usd(receipt.deposit, decimals)} first" if receipt.deposit else ""
            out(
                f"paid   {model} max_tokens={max_tokens}: quote {_usd(receipt.amount, decimals)}, "
                f"charged {_usd(receipt.charged, decimals)} for {usage['prompt_tokens']} in + "
                f"{usage['completion_tokens']} out tokens ({elapsed:.1f} ms{deposit})"
            )
            channel = receipt.channel_id or channel
    result = refund_channel(agent, url, store, budget=budget)
    out(f"refund {_usd(result.amount, decimals)} back from channel {channel[:18]}... in tx {result.transaction}")
    spent = before - token.balance_of(agent.address)
    out(f"funds  the agent spent {_usd(spent, decimals)} = the sum of the charges {_usd(total, decimals)}")
    return 0 if spent == total else 1


def run_demo(table_path: Path = EXAMPLE_TABLE, out: Callable[[str], None] = print) -> int:
    """Run the demo, printing through ``out``; return a process exit code."""
    return asyncio.run(_demo(table_path, out))
