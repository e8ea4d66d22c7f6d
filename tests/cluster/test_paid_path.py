"""The paid path on one Redis node and on a Redis Cluster alike: an exact call paid once (the
same payment fetches the same answer, for another request it is refused), and a channel paid by
vouchers, then claimed by a claimer pass that lists channels from their index and reads them all;
then ``payrouter ledger audit`` reads the journal's indexes and agrees with the chain."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from payrouter.chain import ChainClient
from payrouter.channels import open_channel_store
from payrouter.channels.claimer import Claimer, ClaimReport
from payrouter.channels.contract import BatchSettlementContract
from payrouter.channels.settler import GasWalletSettler
from payrouter.client import (
    ChannelOptions,
    FileChannelStore,
    MemoryBudgetStore,
    PaymentTransport,
    SpendingPolicy,
    receipt_of,
)
from payrouter.facilitator.sender import GasSender
from payrouter.journal import PaymentRecord, State
from payrouter.journal.open import open_journal
from payrouter.sandbox.dev import Sandbox
from payrouter.store import RedisStore
from tests.cluster import REDIS_BACKENDS, delete_keys, redis_url_for
from tests.integration.payments import header, offer, payment, rejection
from tests.price_toml import price_table_toml
from tests.redis_keys import run_token
from tests.sandbox_thread import sandbox_in_thread
from wallets import LocalSigner

CLI = Path(sys.executable).parent / "payrouter"


class Box:
    """A sandbox whose router keeps its state on ``url`` (one node or a cluster)."""

    def __init__(self, sandbox: Sandbox, url: str) -> None:
        self.sandbox = sandbox
        self.url = url


@pytest.fixture(scope="module", params=REDIS_BACKENDS)
def box(request: pytest.FixtureRequest) -> Iterator[Box]:
    url = redis_url_for(request.param, request)
    namespace = f"payrouter-test-paid-{run_token()}"
    try:
        with sandbox_in_thread(agents=2, redis_url=url, namespace=namespace) as sb:
            yield Box(sb, url)
    finally:
        delete_keys(url, namespace)


def _body() -> dict[str, object]:
    return {"model": "gpt-4o-mini", "max_tokens": 24, "messages": [{"role": "user", "content": secrets.token_hex(8)}]}


def _record(box: Box, record_id: str) -> PaymentRecord | None:
    async def read() -> PaymentRecord | None:
        journal = open_journal(box.url, box.sandbox.namespace)
        try:
            return await journal.get(record_id)
        finally:
            await journal.close()

    return asyncio.run(read())


def test_an_exact_call_is_paid_once_and_its_payment_not_reused(box: Box) -> None:
    sb = box.sandbox
    url = f"{sb.router_url}/v1/chat/completions"
    agent = sb.agents[0]
    body = _body()
    with httpx.Client(timeout=30) as http:
        o = offer(http, url, body)
        amount = int(o["accepts"][0]["amount"])
        paid_obj = payment(o, agent)
        paid = header(paid_obj)
        before = [sb.token.balance_of(a) for a in (agent.address, sb.operator.address)]
        first = http.post(url, json=body, headers=paid)
        assert first.status_code == 200, first.text
        again = http.post(url, json=body, headers=paid)  # the payer's connection dropped: same answer
        assert again.status_code == 200 and again.json() == first.json()
        assert again.headers["PAYMENT-RESPONSE"] == first.headers["PAYMENT-RESPONSE"]
        other = http.post(url, json=_body(), headers=paid)
        assert rejection(other) == (402, "invalid_exact_evm_nonce_already_used")
    after = [sb.token.balance_of(a) for a in (agent.address, sb.operator.address)]
    assert (before[0] - after[0], after[1] - before[1]) == (amount, amount)
    nonce = paid_obj["payload"]["authorization"]["nonce"]
    record = _record(box, f"exact:{agent.address.lower()}:{nonce}")
    assert record is not None and record.state == State.SETTLED and record.charged == amount


def _claim_pass(box: Box) -> ClaimReport:
    """One claimer pass as a second instance would run it, on the box's Redis."""
    sb = box.sandbox

    async def run() -> ClaimReport:
        assert sb.authorizer is not None
        chain = ChainClient(sb.chain.rpc_url)
        store = RedisStore(box.url, sb.namespace)
        channels = open_channel_store(box.url, sb.namespace)
        journal = open_journal(box.url, sb.namespace)
        try:
            sender = GasSender(chain, sb.gas_wallet, store, sb.chain.chain_id)
            contract = BatchSettlementContract(chain, sender, sb.chain.chain_id)
            claimer = Claimer(
                channels, GasWalletSettler(contract, sb.authorizer), journal, store, sb.table.pay_to, sb.table.asset.address, 0, 0,
                chain=chain, network=sb.table.network,
            )  # fmt: skip
            report = await claimer.run_once(wait=10)
            assert not report.skipped and not report.errors, report
            return report
        finally:
            for closing in (journal, channels, store, chain):
                await closing.close()

    return asyncio.run(run())


def test_a_channel_pays_by_voucher_and_a_claimer_pass_claims_it(box: Box, tmp_path: Path) -> None:
    sb = box.sandbox
    payer = LocalSigner.generate()
    sb.token.mint(payer.address, 20_000_000)
    transport = PaymentTransport(
        payer,
        SpendingPolicy(max_per_call=200_000, per_day=10_000_000),
        MemoryBudgetStore(),
        channels=ChannelOptions(store=FileChannelStore(tmp_path / "channels"), rpc_url=sb.chain.rpc_url),
        scheme="batch-settlement",
    )
    before = sb.token.balance_of(payer.address)
    operator_before = sb.token.balance_of(sb.operator.address)
    charges, deposits = [], 0
    with httpx.Client(transport=transport, timeout=30) as http:
        for _ in range(4):
            response = http.post(f"{sb.router_url}/v1/chat/completions", json=_body())
            assert response.status_code == 200, response.text
            receipt = receipt_of(response)
            assert receipt is not None and receipt.scheme == "batch-settlement" and receipt.charged is not None
            charges.append(receipt.charged)
            deposits += receipt.deposit
    assert deposits > 0 and before - sb.token.balance_of(payer.address) == deposits
    report = _claim_pass(box)  # reads the channel index and every channel (across slots on a cluster)
    assert report.claimed == sum(charges) == report.settled
    assert sb.token.balance_of(sb.operator.address) - operator_before == sum(charges)


def test_the_ledger_audit_reads_the_journal_and_agrees_with_the_chain(box: Box, tmp_path: Path) -> None:
    # `payrouter ledger audit`, as an operator runs it, on this Redis (after the calls above, and one more)
    sb = box.sandbox
    assert sb.authorizer is not None
    url = f"{sb.router_url}/v1/chat/completions"
    with httpx.Client(timeout=30) as http:
        body = _body()
        response = http.post(url, json=body, headers=header(payment(offer(http, url, body), sb.agents[1])))
        assert response.status_code == 200, response.text
    (tmp_path / "prices.toml").write_text(price_table_toml(sb.table.model_dump(mode="json")))
    providers = "\n".join(
        f'[providers.{p}]\nbase_url = "{sb.upstream_url}/v1"' for p in sorted({m.provider for m in sb.table.models})
    )
    (tmp_path / "payrouter.toml").write_text(
        f'price_table = "prices.toml"\nredis_url = "{box.url}"\nnamespace = "{sb.namespace}"\n'
        f'[facilitator]\nmode = "local"\nrpc_url = "{sb.chain.rpc_url}"\ngas_key_env = "TEST_GAS_KEY"\n'
        f'[channels]\nauthorizer_key_env = "TEST_AUTHORIZER_KEY"\nclaim_poll = 0\n{providers}\n'
    )
    env = {
        **os.environ,
        "TEST_GAS_KEY": sb.gas_wallet.unsafe_export_private_key(),
        "TEST_AUTHORIZER_KEY": sb.authorizer.unsafe_export_private_key(),
    }
    audit = subprocess.run(
        [str(CLI), "ledger", "audit", "--config", str(tmp_path / "payrouter.toml"), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert audit.returncode == 0, audit.stdout + audit.stderr
    report = json.loads(audit.stdout)
    assert report["equal"] and report["journal"]["count"] >= 1 and report["channels"]["equal"], report
