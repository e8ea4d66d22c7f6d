"""Channel money that moves after the gate gave up on it: a deposit mined only after its
sender stopped waiting is refused to the payer at first; the payer's next voucher is served on
it without a second deposit, and the claimer finds the deposit on chain and journals it. A
refund mined only after its sender stopped waiting holds its channel (no voucher may spend a
balance the refund may take) until the claimer sees its nonce spent and journals it.

A router of its own beside the sandbox (its own pay_to and Redis namespace, so the audit sees
only this test's money) waits 0.5 s for a receipt; anvil's automine is off while the deposit
is sent, so it stays in the mempool until the test mines it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from payrouter.app import create_app
from payrouter.chain import ChainClient
from payrouter.channels import open_channel_store
from payrouter.channels.contract import BatchSettlementContract
from payrouter.journal.open import open_journal
from payrouter.ledger import fetch_records
from payrouter.ledger.channel_audit import ChannelAuditReport, audit_channels
from payrouter.sandbox.dev import Sandbox
from payrouter.sandbox.serving import serve_in_thread
from payrouter.store import keys
from tests.redis_keys import delete_namespace, run_token
from wallets import LocalSigner

from .channel_payloads import batch_offer, config_for, opening_payment, refund_payment, voucher_payment
from .claims import claim_pass
from .conftest import REDIS_URL, router_settings
from .payments import header, offer, rejection


class Beside:
    """A router beside the sandbox with a pay_to and namespace of its own."""

    def __init__(self, box: Sandbox) -> None:
        self.box = box
        self.pay_to = LocalSigner.generate().address
        self.namespace = f"payrouter-test-late-{run_token()}"
        table = box.table.model_copy(update={"pay_to": self.pay_to})
        self.settings = router_settings(box, table, namespace=self.namespace, receipt_timeout=0.5, claim_poll=0)

    async def audit(self) -> ChannelAuditReport:
        chain = ChainClient(self.box.chain.rpc_url)
        journal = open_journal(REDIS_URL, self.namespace)
        store = open_channel_store(REDIS_URL, self.namespace)
        try:
            contract = BatchSettlementContract(chain, None, self.box.chain.chain_id)
            return await audit_channels(journal, store, contract, self.box.table.asset.address, self.pay_to)
        finally:
            for closing in (store, journal, chain):
                await closing.close()

    async def deposits(self) -> list[Any]:
        return await self.records("deposit")

    async def records(self, path: str) -> list[Any]:
        journal = open_journal(REDIS_URL, self.namespace)
        try:
            return [r for r in await fetch_records(journal) if r.path == path]
        finally:
            await journal.close()


@pytest.fixture
def beside(box: Sandbox) -> Iterator[Beside]:
    made = Beside(box)
    try:
        yield made
    finally:
        delete_namespace(REDIS_URL, made.namespace)


def _body() -> dict[str, Any]:
    return {"model": "gpt-4o", "max_tokens": 30, "messages": [{"role": "user", "content": secrets.token_hex(4)}]}


def test_a_deposit_mined_after_the_gate_gave_up_is_journaled_and_serves(box: Sandbox, beside: Beside) -> None:
    payer = LocalSigner.generate()
    box.token.mint(payer.address, 10_000_000)
    before = box.token.balance_of(payer.address)
    with serve_in_thread(create_app(beside.settings)) as router, httpx.Client(timeout=30) as http:
        url = f"{router}/v1/chat/completions"
        body = _body()
        quote = offer(http, url, body)
        config = config_for(batch_offer(quote), payer, salt=secrets.randbits(64))
        chain_id = box.chain.chain_id
        first = opening_payment(quote, config, payer, chain_id=chain_id, token_domain=box.token.domain)
        box.chain.rpc("evm_setAutomine", [False])
        try:
            response = http.post(url, json=body, headers=header(first))
        finally:
            box.chain.rpc("evm_mine", [])
            box.chain.rpc("evm_setAutomine", [True])
        assert rejection(response) == (402, "invalid_batch_settlement_evm_deposit_transaction_failed"), response.text
        deposited = before - box.token.balance_of(payer.address)
        assert deposited == int(batch_offer(quote)["extra"]["minDeposit"])  # it landed, after the answer
        assert asyncio.run(beside.deposits()) == []
        # the journal does not know it yet, and the audit says so
        late = asyncio.run(beside.audit())
        assert [(d.kind, d.expected, d.actual) for d in late.differences] == [("balance_vs_chain", 0, deposited)]

        # the payer's voucher is served on it at once: the store's empty mirror is refreshed
        # from the chain, without a second deposit
        body = _body()
        quote = offer(http, url, body)
        amount = int(batch_offer(quote)["amount"])
        payment = voucher_payment(quote, config, amount, payer, chain_id=chain_id)
        served = http.post(url, json=body, headers=header(payment))
        assert served.status_code == 200, served.text
        assert box.token.balance_of(payer.address) == before - deposited

        report = claim_pass(box, beside.namespace, beside.pay_to)

        assert report.journaled == 1
        (record,) = asyncio.run(beside.deposits())
        assert record.amount == deposited and record.payer.lower() == payer.address.lower()
    audited = asyncio.run(beside.audit())
    assert audited.equal, audited.differences
    (row,) = audited.channels
    assert row.balance == row.journal_balance == deposited and row.journal_charged > 0


def _charged(response: httpx.Response) -> int:
    receipt = json.loads(base64.b64decode(response.headers["payment-response"]))
    return int(receipt["extra"]["channelState"]["chargedCumulativeAmount"])


def test_a_refund_in_doubt_holds_its_channel_until_the_chain_decides(box: Sandbox, beside: Beside) -> None:
    payer = LocalSigner.generate()
    box.token.mint(payer.address, 10_000_000)
    chain_id = box.chain.chain_id
    with serve_in_thread(create_app(beside.settings)) as router, httpx.Client(timeout=30) as http:
        url = f"{router}/v1/chat/completions"
        body = _body()
        quote = offer(http, url, body)
        config = config_for(batch_offer(quote), payer, salt=secrets.randbits(64))
        first = opening_payment(quote, config, payer, chain_id=chain_id, token_domain=box.token.domain)
        opened = http.post(url, json=body, headers=header(first))
        assert opened.status_code == 200, opened.text
        charged = _charged(opened)
        probe = http.get(url)
        probe_offer = json.loads(base64.b64decode(probe.headers["PAYMENT-REQUIRED"]))
        refund = refund_payment(probe_offer, config, charged, payer, chain_id=chain_id, amount=None)
        before = box.token.balance_of(payer.address)
        body = _body()
        quote = offer(http, url, body)
        voucher = voucher_payment(quote, config, charged + int(batch_offer(quote)["amount"]), payer, chain_id=chain_id)
        key = f"{beside.namespace}:{keys.channel('0x' + config.channel_id(chain_id).hex())}"
        box.chain.rpc("evm_setAutomine", [False])
        try:
            asked = http.get(url, headers=header(refund))
            assert rejection(asked) == (402, "invalid_batch_settlement_evm_refund_transaction_failed"), asked.text
            # unmined, the refund may still land: the channel takes no voucher meanwhile
            held = http.post(url, json=body, headers=header(voucher))
            assert rejection(held) == (402, "invalid_batch_settlement_evm_channel_busy"), held.text
            with redis.Redis.from_url(REDIS_URL) as store:
                until = int(store.hget(key, "pending_until_ms") or 0)
            # held for as long as a transaction in doubt is waited for, not a request's minute
            assert until > time.time() * 1000 + 30 * 60_000
            (pending,) = asyncio.run(beside.records("refund"))
            assert pending.state == "pending"
            # a claimer pass meanwhile keeps the hold (renewed) and claims nothing on the channel
            time.sleep(0.01)
            report = claim_pass(box, beside.namespace, beside.pay_to)
            assert report.in_doubt == [pending.id] and report.claim_txs == []
            with redis.Redis.from_url(REDIS_URL) as store:
                assert int(store.hget(key, "pending_until_ms") or 0) > until
        finally:
            box.chain.rpc("evm_mine", [])
            box.chain.rpc("evm_setAutomine", [True])
        refunded = box.token.balance_of(payer.address) - before
        assert refunded > 0  # mined now
        with redis.Redis.from_url(REDIS_URL) as store:
            report = claim_pass(box, beside.namespace, beside.pay_to)

            assert report.journaled == 1 and report.in_doubt == []
            assert store.hget(key, "pending") == b""  # the channel is free again
            # and its mirror holds what the refund left: the balance is what was charged
            assert int(store.hget(key, "balance") or 0) == charged
        (record,) = asyncio.run(beside.records("refund"))
        assert record.state == "settled" and record.amount == refunded and record.id == pending.id
    audited = asyncio.run(beside.audit())
    assert audited.equal, audited.differences
