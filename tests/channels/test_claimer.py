"""The channel claimer on a real anvil and a real Redis (127.0.0.1:6379).

Payers open channels with real ERC-3009 deposits; requests are charged through the channel
store's reserve/commit as the gate does, with the voucher records the gate journals; the
claimer claims, settles to pay_to and journals, and the ledger's channel audit checks the
three counts. Token balances and on-chain totals are checked exactly.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from web3 import Web3

from payrouter.artifacts import load_artifact
from payrouter.chain import ChainClient
from payrouter.channels import RedisChannelStore
from payrouter.channels.claimer import STUCK_VOUCHER_MS, Claimer, ClaimReport
from payrouter.channels.contract import MAX_CLAIMS_PER_BATCH, BatchSettlementContract, Erc3009Deposit
from payrouter.channels.records import MOVEMENT_PATHS, SCHEME, claim_deltas, claim_record
from payrouter.channels.settler import GasWalletSettler
from payrouter.devchain import DevChain, DevToken
from payrouter.facilitator import RemoteFacilitator
from payrouter.facilitator.channels import FACILITATOR_CLAIM_ROWS, FacilitatorSettler
from payrouter.facilitator.sender import GasSender
from payrouter.journal import Journal, PaymentRecord, State, now_ms
from payrouter.journal.open import open_journal
from payrouter.ledger import fetch_records
from payrouter.ledger.audit import audit
from payrouter.ledger.channel_audit import ChannelAuditReport, ChannelRow, audit_channels, compare_channels
from payrouter.reconciler import Reconciler, Resolver
from payrouter.sandbox.serving import serve_in_thread
from payrouter.store import RedisStore
from payrouter.store.redis import connect
from tests.delay_proxy import DelayProxy
from tests.integration.official_facilitator import facilitator_app
from tests.redis_keys import run_token
from wallets import (
    BATCH_SETTLEMENT_ADDRESS,
    ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
    ChannelConfig,
    LocalSigner,
    ReceiveWithAuthorization,
    Voucher,
    batch_settlement_domain,
    deposit_nonce,
    sign_authorization,
)

from ..polling import async_wait_until
from ..redis_keys import delete_namespace
from ..service_config import GAS_KEY_ENV, example_table, write_config

REDIS_URL = "redis://127.0.0.1:6379/0"
TTL_MS = 60_000
NEVER = 10**30  # a threshold no test reaches
CLI = Path(sys.executable).parent / "payrouter"


@pytest.fixture(scope="module")
def installed(chain: DevChain) -> DevChain:
    chain.install_batch_settlement()
    return chain


@dataclass
class Payer:
    signer: LocalSigner
    config: ChannelConfig
    channel_id: str
    deposit: int
    charged: int = 0
    charges: list[int] = field(default_factory=list)


@dataclass
class Env:
    chain: DevChain
    token: DevToken
    client: ChainClient
    contract: BatchSettlementContract
    gas: LocalSigner
    pay_to: str
    authorizer: LocalSigner
    namespace: str
    store: RedisChannelStore
    journal: Journal
    locks: RedisStore
    closers: list[object] = field(default_factory=list)

    def claimer(
        self,
        *,
        interval: float = 3600.0,
        threshold: int = 0,
        store: RedisChannelStore | None = None,
        journal: Journal | None = None,
        locks: RedisStore | None = None,
        contract: BatchSettlementContract | None = None,
        poll: float = 30.0,
    ) -> Claimer:
        return Claimer(
            store or self.store,
            GasWalletSettler(contract or self.contract, self.authorizer),
            journal or self.journal,
            locks or self.locks,
            self.pay_to,
            self.token.address,
            interval,
            threshold,
            chain=self.client,
            network=self.chain.network,
            poll=poll,
        )

    def connections(self) -> tuple[RedisChannelStore, Journal, RedisStore]:
        """A second server instance's own connections to the same Redis namespace."""
        trio = (
            RedisChannelStore(connect(REDIS_URL), self.namespace),
            open_journal(REDIS_URL, self.namespace),
            RedisStore(REDIS_URL, self.namespace),
        )
        self.closers.extend(trio)
        return trio

    def gas_nonce(self) -> int:
        return int(self.chain.w3.eth.get_transaction_count(self.gas.address))


@pytest.fixture
async def env(installed: DevChain, token: DevToken) -> AsyncIterator[Env]:
    namespace = f"payrouter-test-claimer-{run_token()}"
    client = ChainClient(installed.rpc_url)
    gas = installed.new_account()
    locks = RedisStore(REDIS_URL, namespace)
    contract = BatchSettlementContract(client, GasSender(client, gas, locks, installed.chain_id), installed.chain_id)
    pay_to = LocalSigner.generate().address  # fresh: its receiver totals and balance start at 0
    store = RedisChannelStore(connect(REDIS_URL), namespace)
    journal = open_journal(REDIS_URL, namespace)
    e = Env(installed, token, client, contract, gas, pay_to, installed.new_account(0), namespace, store, journal, locks)
    try:
        yield e
    finally:
        try:
            for closer in [store, journal, locks, *e.closers]:
                await closer.close()  # type: ignore[attr-defined]
            await client.close()
        finally:
            delete_namespace(REDIS_URL, namespace)


async def _open_channel(env: Env, deposit: int, fund: int = 10**9, stored: bool = True) -> Payer:
    """A payer deposits ``deposit`` for real (ERC-3009 to the collector) and the store learns
    the channel as the gate does after a deposit (``stored``; else see `_store`)."""
    signer = env.chain.new_account()
    env.token.mint(signer.address, fund)
    config = ChannelConfig(
        payer=signer.address,
        payer_authorizer=signer.address,
        receiver=env.pay_to,
        receiver_authorizer=env.authorizer.address,
        token=env.token.address,
        withdraw_delay=900,
        salt=secrets.token_bytes(32),
    )
    channel_id = config.channel_id(env.chain.chain_id)
    salt = secrets.randbits(64)
    now = int(env.chain.w3.eth.get_block("latest")["timestamp"])
    auth = ReceiveWithAuthorization(
        signer.address, ERC3009_DEPOSIT_COLLECTOR_ADDRESS, deposit, 0, now + 3600, deposit_nonce(channel_id, salt)
    )
    signature = sign_authorization(signer, env.token.domain, auth)
    await env.contract.deposit(config, deposit, Erc3009Deposit(0, now + 3600, salt, signature))
    payer = Payer(signer, config, "0x" + channel_id.hex(), deposit)
    if stored:
        await _store(env, payer)
    return payer


async def _store(env: Env, payer: Payer) -> None:
    """The store learns ``payer``'s channel, as the gate does after a deposit or a sync."""
    await env.store.upsert_onchain(
        payer.channel_id,
        config=json.dumps(payer.config.to_wire(), separators=(",", ":")),
        payer=payer.signer.address,
        balance=payer.deposit,
        total_claimed=0,
        withdraw_requested_at=0,
        refund_nonce=0,
        synced_at_ms=now_ms(),
    )


async def _charge(env: Env, payer: Payer, amount: int, charge: int | None = None) -> None:
    """One paid request as the gate runs it: a voucher for ``charged + amount`` reserved, the
    actual ``charge`` committed, the voucher record journaled settled."""
    charge = amount if charge is None else charge
    signed_max = payer.charged + amount
    voucher = Voucher(bytes.fromhex(payer.channel_id[2:]), signed_max)
    signature = "0x" + payer.signer.sign_typed_data(batch_settlement_domain(env.chain.chain_id), voucher).hex()
    token = secrets.token_hex(8)
    reserved = await env.store.reserve(
        payer.channel_id, amount=amount, signed_max=signed_max, signature=signature, token=token, ttl_ms=TTL_MS
    )
    assert reserved.ok, reserved.kind
    record = _voucher_record(env, payer, amount, owner=token)
    assert (await env.journal.open(record)).outcome == "new"
    assert await env.store.commit(payer.channel_id, token, charge) is not None
    settled = record.moved(State.SETTLED, charged=charge, settled_at=now_ms())
    assert (await env.journal.advance(settled, [State.CLAIMED]))[0]
    payer.charged += charge
    payer.charges.append(charge)


def _voucher_record(env: Env, payer: Payer, amount: int, owner: str) -> PaymentRecord:
    return PaymentRecord(
        id=f"batch:{payer.channel_id}:{payer.charged}",
        scheme=SCHEME,
        state=State.CLAIMED,
        owner=owner,
        payer=payer.signer.address,
        pay_to=env.pay_to,
        asset=env.token.address,
        network=env.chain.network,
        amount=amount,
        nonce=payer.channel_id,
        valid_before=0,
        x402_version=2,
        payment="{}",
        fingerprint="",
        request="r",
        path="/v1/chat/completions",
        stream=False,
        route="{}",
        model="gpt-4o-mini",
    )


async def _channels(env: Env, *deposits: int) -> list[Payer]:
    return [await _open_channel(env, d) for d in deposits]


async def _onchain_claimed(env: Env, payers: list[Payer]) -> list[int]:
    states = await env.contract.channels([bytes.fromhex(p.channel_id[2:]) for p in payers])
    return [states[bytes.fromhex(p.channel_id[2:])].total_claimed for p in payers]


async def _records(env: Env, prefix: str) -> list[PaymentRecord]:
    return [r for r in await fetch_records(env.journal) if r.id.startswith(prefix)]


def _withdraw(env: Env, payer: Payer, function: str, *args: int) -> None:
    """The payer calls ``initiateWithdraw(config, amount)`` or ``finalizeWithdraw(config)``
    itself (a unilateral withdrawal)."""
    address = Web3.to_checksum_address(BATCH_SETTLEMENT_ADDRESS)
    settlement = env.chain.w3.eth.contract(address=address, abi=load_artifact("BatchSettlement")["abi"])
    c = payer.config
    config = (c.payer, c.payer_authorizer, c.receiver, c.receiver_authorizer, c.token, c.withdraw_delay, c.salt)
    data = settlement.encode_abi(function, [config, *args])
    env.chain.send(payer.signer, {"to": BATCH_SETTLEMENT_ADDRESS, "data": data})


def _initiate_withdraw(env: Env, payer: Payer, amount: int) -> None:
    """The payer starts a unilateral withdrawal, sending the transaction itself."""
    _withdraw(env, payer, "initiateWithdraw", amount)


def _movements(records: list[PaymentRecord]) -> list[tuple[str, str, int]]:
    """(path, channel, amount) of the deposit, refund and withdrawal records, sorted."""
    return sorted((r.path, r.nonce, r.amount) for r in records if r.path in MOVEMENT_PATHS)


# ------------------------------------------------------------------ claims


async def test_a_pass_claims_every_charged_channel_and_sweeps_it_to_pay_to(env: Env) -> None:
    payers = await _channels(env, 100_000, 50_000, 70_000)
    await _charge(env, payers[0], 3_000)
    await _charge(env, payers[0], 2_000, charge=1_500)  # usage-priced: charged below the voucher
    await _charge(env, payers[1], 50_000)
    await _charge(env, payers[2], 12_345)
    total = sum(p.charged for p in payers)

    report = await env.claimer(threshold=1).run_once()

    assert report.errors == [] and not report.skipped
    assert report.trigger == "threshold" and report.channels == 3
    assert report.unclaimed == total and report.claimed == total
    assert len(report.claim_txs) == 1
    assert await _onchain_claimed(env, payers) == [p.charged for p in payers]
    assert env.token.balance_of(env.pay_to) == total == report.settled
    assert await env.contract.receiver_totals(env.pay_to, env.token.address) == (total, total)
    # the store's mirror follows the chain
    stored = await env.store.get_many([p.channel_id for p in payers])
    assert [stored[p.channel_id].total_claimed for p in payers] == [p.charged for p in payers]
    # the journal: one claim record with the per-channel deltas, one settle record
    (claim,) = await _records(env, "batch-claim:")
    assert claim.id == f"batch-claim:{report.claim_txs[0]}" and claim.state == State.SETTLED
    assert claim.amount == total and claim.charged == 0 and claim.tx == report.claim_txs[0]
    assert claim.path == "claim" and claim.scheme == SCHEME and claim.pay_to == env.pay_to
    assert claim_deltas(claim) == {p.channel_id: (p.charged, p.charged) for p in payers}
    (settle,) = await _records(env, "batch-settle:")
    assert settle.id == f"batch-settle:{report.settle_tx}" and settle.amount == total and settle.charged == 0
    assert settle.state == State.SETTLED and settle.path == "settle"
    # revenue is the vouchers' charges alone: claims and settles carry no charge
    settled = [r for r in await _records(env, "batch") if r.state == State.SETTLED]
    assert sum(r.charged for r in settled) == total
    channels = await audit_channels(env.journal, env.store, env.contract, env.token.address, env.pay_to)
    assert channels.equal, channels.differences
    assert channels.charged == total and channels.unclaimed == 0

    # more charges later are claimed as deltas
    await _charge(env, payers[1], 0)  # a request that cost nothing
    await _charge(env, payers[2], 655)
    report = await env.claimer(threshold=1).run_once()
    assert report.claimed == 655 and report.settled == 655
    assert env.token.balance_of(env.pay_to) == total + 655
    claims = await _records(env, "batch-claim:")
    assert sorted(c.amount for c in claims) == [655, total]


async def test_more_than_100_channels_are_claimed_in_batches_of_100(env: Env) -> None:
    payers = [await _open_channel(env, 1_000) for _ in range(MAX_CLAIMS_PER_BATCH + 1)]
    for i, payer in enumerate(payers):
        await _charge(env, payer, 1 + i)
    total = sum(p.charged for p in payers)

    report = await env.claimer(threshold=0).run_once()

    assert report.errors == [] and len(report.claim_txs) == 2 and report.claimed == total
    assert await _onchain_claimed(env, payers) == [p.charged for p in payers]
    assert env.token.balance_of(env.pay_to) == total
    claims = await _records(env, "batch-claim:")
    assert sorted(len(claim_deltas(c)) for c in claims) == [1, MAX_CLAIMS_PER_BATCH]
    assert sum(c.amount for c in claims) == total


async def test_the_background_loop_claims_what_is_charged_until_stopped(env: Env) -> None:
    (payer,) = await _channels(env, 5_000)
    claimer = env.claimer(threshold=0, poll=0.05)
    claimer.start()
    try:
        await _charge(env, payer, 700)
        await async_wait_until(lambda: env.token.balance_of(env.pay_to) == 700, "the first charge swept")
        await _charge(env, payer, 300)
        await async_wait_until(lambda: env.token.balance_of(env.pay_to) == 1_000, "the second charge swept")
    finally:
        await claimer.stop()
    await _charge(env, payer, 50)
    await asyncio.sleep(0.3)
    assert await _onchain_claimed(env, [payer]) == [1_000]  # stopped: nothing more claimed


async def test_nothing_is_sent_below_the_threshold_before_the_interval(env: Env) -> None:
    payers = await _channels(env, 10_000, 10_000)
    await _charge(env, payers[0], 400)
    await _charge(env, payers[1], 600)
    nonce = env.gas_nonce()

    report = await env.claimer(threshold=1_001, interval=3600).run_once()
    assert report.trigger == "" and report.unclaimed == 1_000 and report.claim_txs == []
    assert report.settle_tx == "" and report.errors == []
    assert env.gas_nonce() == nonce  # not a single transaction
    assert await _onchain_claimed(env, payers) == [0, 0]

    # the interval counts from the first pass that saw money waiting
    await asyncio.sleep(0.3)
    report = await env.claimer(threshold=1_001, interval=0.25).run_once()
    assert report.trigger == "interval" and report.claimed == 1_000
    assert env.token.balance_of(env.pay_to) == 1_000
    # ... and from the last claim afterwards
    await _charge(env, payers[0], 5)
    report = await env.claimer(threshold=1_001, interval=60).run_once()
    assert report.trigger == "" and report.claim_txs == []


@pytest.fixture
def rewind(installed: DevChain) -> Iterator[None]:
    """Undo a test's time travel (and its chain state) so later tests on this chain sign
    against wall-clock time."""
    snapshot = installed.rpc("evm_snapshot", [])
    yield
    installed.rpc("evm_revert", [snapshot])


async def test_a_pending_withdrawal_is_claimed_at_once_and_mirrored(env: Env, rewind: None) -> None:
    leaving, staying = await _channels(env, 20_000, 20_000)
    await _charge(env, leaving, 7_000)
    await _charge(env, staying, 3_000)
    _initiate_withdraw(env, leaving, 13_000)  # everything not charged... as far as the chain knows, 20 000 is free

    report = await env.claimer(threshold=NEVER).run_once()

    assert report.trigger == "withdrawal" and report.withdrawing == [leaving.channel_id]
    assert report.claimed == 7_000 and len(report.claim_txs) == 1
    assert await _onchain_claimed(env, [leaving, staying]) == [7_000, 0]  # only the one with a deadline
    assert env.token.balance_of(env.pay_to) == 7_000
    state = await env.store.get(leaving.channel_id)
    assert state is not None and state.withdraw_requested_at > 0 and state.total_claimed == 7_000
    # the gate now refuses new vouchers on it
    voucher = Voucher(bytes.fromhex(leaving.channel_id[2:]), 7_100)
    signature = "0x" + leaving.signer.sign_typed_data(batch_settlement_domain(env.chain.chain_id), voucher).hex()
    refused = await env.store.reserve(
        leaving.channel_id, amount=100, signed_max=7_100, signature=signature, token="t", ttl_ms=TTL_MS
    )
    assert refused.kind == "withdrawing"
    # the delay passes and the payer takes the rest: the next pass journals the withdrawal,
    # and the journal's movements add up to the channel's balance on chain
    env.chain.rpc("evm_increaseTime", [leaving.config.withdraw_delay + 1])
    _withdraw(env, leaving, "finalizeWithdraw")
    assert env.token.balance_of(leaving.signer.address) == 10**9 - 20_000 + 13_000

    report = await env.claimer(threshold=NEVER).run_once()

    assert report.errors == []
    records = await fetch_records(env.journal)
    assert ("withdraw", leaving.channel_id, 13_000) in _movements(records)
    (row,) = [r for r in (await _audit(env)).channels if r.channel_id == leaving.channel_id]
    assert row.balance == 7_000 == row.journal_balance


async def _audit(env: Env) -> ChannelAuditReport:
    report = await audit_channels(env.journal, env.store, env.contract, env.token.address, env.pay_to)
    assert report.equal, report.differences
    return report


async def test_a_claimer_killed_between_passes_loses_nothing_and_claims_nothing_twice(env: Env) -> None:
    payers = await _channels(env, 9_000, 9_000, 9_000)
    for i, payer in enumerate(payers):
        await _charge(env, payer, 1_000 * (i + 1))
    await env.claimer(threshold=0).run_once()
    claimed = await _onchain_claimed(env, payers)
    balance = env.token.balance_of(env.pay_to)

    # a fresh process (new connections, a new claimer) after the first died: same totals
    store, journal, locks = env.connections()
    nonce = env.gas_nonce()
    report = await env.claimer(threshold=0, store=store, journal=journal, locks=locks).run_once()
    assert report.claim_txs == [] and report.settle_tx == "" and report.unclaimed == 0
    assert env.gas_nonce() == nonce
    assert await _onchain_claimed(env, payers) == claimed == [1_000, 2_000, 3_000]
    assert env.token.balance_of(env.pay_to) == balance == 6_000
    assert len(await _records(env, "batch-claim:")) == 1


async def test_a_claim_sent_in_doubt_is_counted_once_from_its_receipt(env: Env) -> None:
    payers = await _channels(env, 9_000, 9_000)
    await _charge(env, payers[0], 1_000)
    await _charge(env, payers[1], 2_000)
    # a claimer sent this claim and died before learning its outcome: it left a pending record
    states = await env.store.get_many([p.channel_id for p in payers])
    rows = [
        (p.config, states[p.channel_id].signed_max, bytes.fromhex(states[p.channel_id].signature[2:]), p.charged)
        for p in payers
    ]
    tx = await env.contract.claim_with_signature(rows, env.authorizer)
    asked = {p.channel_id: (p.charged, p.charged) for p in payers}
    pending = claim_record(
        tx, asked, network=env.chain.network, asset=env.token.address, pay_to=env.pay_to, state=State.PENDING
    )
    await env.journal.advance(pending, [State.PENDING])

    report = await env.claimer(threshold=0).run_once()

    assert report.claim_txs == [tx] and report.claimed == 3_000  # decided from the receipt, nothing resent
    (claim,) = await _records(env, "batch-claim:")
    assert claim.state == State.SETTLED and claim.amount == 3_000
    assert report.settled == 3_000 and env.token.balance_of(env.pay_to) == 3_000
    assert await _onchain_claimed(env, payers) == [1_000, 2_000]
    channels = await audit_channels(env.journal, env.store, env.contract, env.token.address, env.pay_to)
    assert channels.equal, channels.differences


async def test_a_claim_not_mined_in_time_is_pending_then_counted_once_mined(env: Env) -> None:
    payers = await _channels(env, 9_000, 9_000)
    await _charge(env, payers[0], 1_500)
    await _charge(env, payers[1], 2_500)
    sender = GasSender(env.client, env.gas, env.locks, env.chain.chain_id)
    impatient = BatchSettlementContract(env.client, sender, env.chain.chain_id, receipt_timeout=0.3)
    env.chain.rpc("evm_setAutomine", [False])
    try:
        report = await env.claimer(threshold=0, contract=impatient).run_once()
        assert report.claim_txs == [] and len(report.in_doubt) == 1 and report.settle_tx == ""
        (tx,) = report.in_doubt
        (pending,) = await _records(env, "batch-claim:")
        assert pending.state == State.PENDING and pending.tx == tx
        # still unmined: the next pass sends nothing more and leaves it in doubt
        report = await env.claimer(threshold=0, contract=impatient).run_once()
        assert report.in_doubt == [tx] and report.claim_txs == []
        env.chain.rpc("evm_mine", [])
    finally:
        env.chain.rpc("evm_setAutomine", [True])

    report = await env.claimer(threshold=0, contract=impatient).run_once()

    assert report.claim_txs == [tx] and report.claimed == 4_000 and report.settled == 4_000
    (claim,) = await _records(env, "batch-claim:")
    assert claim.state == State.SETTLED and claim.amount == 4_000
    assert await _onchain_claimed(env, payers) == [1_500, 2_500]
    assert env.token.balance_of(env.pay_to) == 4_000
    channels = await audit_channels(env.journal, env.store, env.contract, env.token.address, env.pay_to)
    assert channels.equal, channels.differences


async def test_claims_and_settles_nobody_journaled_are_found_in_the_logs(env: Env) -> None:
    payers = await _channels(env, 9_000, 9_000)
    await _charge(env, payers[0], 1_000)
    await _charge(env, payers[1], 2_000)
    states = await env.store.get_many([p.channel_id for p in payers])

    def row(payer: Payer) -> tuple[ChannelConfig, int, bytes, int]:
        state = states[payer.channel_id]
        return (payer.config, state.signed_max, bytes.fromhex(state.signature[2:]), payer.charged)

    # a claimer killed after its claim was mined and before it wrote anything
    lost = await env.contract.claim_with_signature([row(payers[0])], env.authorizer)
    # the gate's refund of the other channel claims its charge in the same transaction
    done = await env.contract.refund(payers[1].config, 10**9, 0, [row(payers[1])], env.authorizer)
    refund, refunded = done.tx, done.refunded
    assert refunded == 9_000 - 2_000
    # and someone else sweeps pay_to's claims (settle is open to anyone)
    outsider = BatchSettlementContract(
        env.client, GasSender(env.client, env.chain.new_account(), env.locks, env.chain.chain_id), env.chain.chain_id
    )
    swept, amount = await outsider.settle(env.pay_to, env.token.address)
    assert amount == 3_000
    # nor did anyone journal the deposits (made without the gate) or the refund
    assert _movements(await fetch_records(env.journal)) == []

    report = await env.claimer(threshold=0).run_once()

    assert sorted(report.claim_txs) == sorted([lost, refund]) and report.claimed == 3_000
    assert report.settle_tx == swept and report.settled == 3_000
    claims = {c.tx: c for c in await _records(env, "batch-claim:")}
    assert claim_deltas(claims[lost]) == {payers[0].channel_id: (1_000, 1_000)}
    assert claim_deltas(claims[refund]) == {payers[1].channel_id: (2_000, 2_000)}
    (settle,) = await _records(env, "batch-settle:")
    assert settle.tx == swept and settle.amount == 3_000
    a, b = payers[0].channel_id, payers[1].channel_id
    assert report.journaled == 3
    assert _movements(await fetch_records(env.journal)) == sorted(
        [("deposit", a, 9_000), ("deposit", b, 9_000), ("refund", b, 7_000)]
    )
    (refund_record,) = await _records(env, f"batch-refund:{b}:0")
    assert refund_record.tx == refund and refund_record.payer.lower() == payers[1].signer.address.lower()
    await _audit(env)
    # found once: the next pass journals nothing again
    again = await env.claimer(threshold=0).run_once()
    assert again.claim_txs == [] and again.settle_tx == "" and again.journaled == 0
    assert len(await _records(env, "batch-claim:")) == 2
    assert len(_movements(await fetch_records(env.journal))) == 3


async def test_two_claimers_racing_claim_once(env: Env) -> None:
    payers = await _channels(env, 5_000, 5_000, 5_000)
    for payer in payers:
        await _charge(env, payer, 1_234)
    first = env.claimer(threshold=0)
    store, journal, locks = env.connections()
    second = env.claimer(threshold=0, store=store, journal=journal, locks=locks)

    reports: tuple[ClaimReport, ClaimReport] = await asyncio.gather(first.run_once(), second.run_once())

    assert sum(len(r.claim_txs) for r in reports) == 1, reports
    assert sum(r.claimed for r in reports) == 3 * 1_234
    assert await _onchain_claimed(env, payers) == [1_234] * 3
    assert env.token.balance_of(env.pay_to) == 3 * 1_234
    assert len(await _records(env, "batch-claim:")) == 1
    assert len(await _records(env, "batch-settle:")) == 1

    # the loser waiting for the lock instead runs after the winner, and finds nothing left
    for payer in payers:
        await _charge(env, payer, 100)
    reports = await asyncio.gather(first.run_once(wait=30), second.run_once(wait=30))
    assert not any(r.skipped for r in reports)
    assert sorted(len(r.claim_txs) for r in reports) == [0, 1]
    assert await _onchain_claimed(env, payers) == [1_334] * 3
    assert env.token.balance_of(env.pay_to) == 3 * 1_334


async def test_one_bad_voucher_holds_up_no_other_channel(env: Env) -> None:
    good, bad = await _channels(env, 5_000, 5_000)
    await _charge(env, good, 1_000)
    await _charge(env, bad, 1_000)
    # the stored voucher of one channel is not the payer's (a corrupted store): the batch is
    # refused in simulation, split, and the good channel is claimed alone
    forged = (
        "0x"
        + LocalSigner.generate()
        .sign_typed_data(batch_settlement_domain(env.chain.chain_id), Voucher(bytes.fromhex(bad.channel_id[2:]), 2_000))
        .hex()
    )
    token = secrets.token_hex(8)
    assert (
        await env.store.reserve(
            bad.channel_id, amount=1_000, signed_max=2_000, signature=forged, token=token, ttl_ms=TTL_MS
        )
    ).ok
    await env.store.commit(bad.channel_id, token, 1_000)

    report = await env.claimer(threshold=0).run_once()

    assert await _onchain_claimed(env, [good, bad]) == [1_000, 0]
    assert report.claimed == 1_000 and len(report.errors) == 1
    assert "InvalidVoucherSignature" in report.errors[0] and forged[2:] not in report.errors[0]


def _refusing_log_filters(rpc_url: str) -> Starlette:
    """A JSON-RPC node in front of ``rpc_url`` that refuses every ``eth_getLogs`` whose first
    topic is a list (as providers capping a filter's size do), and passes the rest on."""

    def refused(call: dict[str, Any]) -> bool:
        if call.get("method") != "eth_getLogs":
            return False
        topics = (call.get("params") or [{}])[0].get("topics") or []
        return bool(topics) and isinstance(topics[0], list)

    async def forward(request: Request) -> Response:
        body = await request.json()
        calls = body if isinstance(body, list) else [body]
        async with httpx.AsyncClient(timeout=30) as http:
            answers = []
            for call in calls:
                if refused(call):
                    answers.append(
                        {
                            "jsonrpc": "2.0",
                            "id": call.get("id"),
                            "error": {"code": -32005, "message": "filter too large"},
                        }
                    )
                else:
                    answers.append((await http.post(rpc_url, json=call)).json())
        return JSONResponse(answers if isinstance(body, list) else answers[0])

    return Starlette(routes=[Route("/", forward, methods=["POST"])])


async def test_a_node_refusing_the_movement_scan_holds_up_no_claim(env: Env) -> None:
    (payer,) = await _channels(env, 5_000)
    await _charge(env, payer, 1_000)
    chain_id = env.chain.chain_id
    with serve_in_thread(_refusing_log_filters(env.chain.rpc_url)) as url:
        node = ChainClient(url)
        try:
            contract = BatchSettlementContract(node, GasSender(node, env.gas, env.locks, chain_id), chain_id)
            claimer = Claimer(
                env.store, GasWalletSettler(contract, env.authorizer), env.journal, env.locks, env.pay_to,
                env.token.address, 3600.0, 0, chain=node, network=env.chain.network,
            )  # fmt: skip
            report = await claimer.run_once()
        finally:
            await node.close()
    assert report.claimed == 1_000 and report.settled == 1_000
    assert env.token.balance_of(env.pay_to) == 1_000
    assert len(report.errors) == 1 and report.errors[0].startswith("channel movements not journaled")
    # the same pass on a node that answers journals them
    report = await env.claimer(threshold=0).run_once()
    assert report.errors == [] and report.journaled == 1


async def test_a_channel_the_store_learns_late_has_its_deposit_journaled(env: Env) -> None:
    (known,) = await _channels(env, 4_000)
    # deposited straight into the contract: the store learns of it only later (a voucher's
    # sync), after a pass has scanned past the deposit's block
    late = await _open_channel(env, 6_000, stored=False)
    first = await env.claimer(threshold=0).run_once()
    assert first.journaled == 1  # the known channel's deposit only
    await _store(env, late)

    report = await env.claimer(threshold=0).run_once()

    assert report.errors == [] and report.journaled == 1
    assert _movements(await fetch_records(env.journal)) == sorted(
        [("deposit", known.channel_id, 4_000), ("deposit", late.channel_id, 6_000)]
    )
    await _audit(env)


async def test_a_long_split_keeps_the_lock_for_every_transaction(env: Env) -> None:
    payers = await _channels(env, 5_000, 5_000, 5_000, 5_000)
    for payer in payers[:3]:
        await _charge(env, payer, 1_000)
    bad = payers[3]
    await _charge(env, bad, 1_000)
    # one stored voucher is not the payer's: the 4-row batch is refused, then halved until the
    # bad row stands alone: five attempts, each several replies of a chain 0.1 s away, far
    # longer than the 1 s the lock lives without a refresh
    forged = "0x" + (
        LocalSigner.generate()
        .sign_typed_data(batch_settlement_domain(env.chain.chain_id), Voucher(bytes.fromhex(bad.channel_id[2:]), 2_000))
        .hex()
    )
    token = secrets.token_hex(8)
    reserved = await env.store.reserve(
        bad.channel_id, amount=1_000, signed_max=2_000, signature=forged, token=token, ttl_ms=TTL_MS
    )
    assert reserved.ok
    await env.store.commit(bad.channel_id, token, 1_000)
    proxy = DelayProxy("127.0.0.1", int(env.chain.rpc_url.rsplit(":", 1)[1]))
    proxy.start()
    slow = ChainClient(f"http://127.0.0.1:{proxy.port}")
    try:
        proxy.reply_delay = 0.1
        contract = BatchSettlementContract(
            slow, GasSender(slow, env.gas, env.locks, env.chain.chain_id), env.chain.chain_id
        )
        slow_pass = Claimer(
            env.store, GasWalletSettler(contract, env.authorizer), env.journal, env.locks, env.pay_to,
            env.token.address, 3600.0, 0, chain=slow, network=env.chain.network, lock_ttl=1,
        )  # fmt: skip
        rival = env.claimer(threshold=0)
        running = asyncio.ensure_future(slow_pass.run_once())
        while await env.locks.get(Claimer.LOCK) is None:  # the slow pass holds the lock first
            await asyncio.sleep(0.01)
        rivals: list[ClaimReport] = []
        started = asyncio.get_running_loop().time()
        while not running.done():
            rivals.append(await rival.run_once())
            await asyncio.sleep(0.1)
        took = asyncio.get_running_loop().time() - started
        report = await running
    finally:
        await slow.close()
        proxy.stop()
    assert rivals and all(r.skipped for r in rivals)  # no other pass ever got in
    assert took > 1.5  # though the pass outlived its lock's TTL
    assert report.claimed == 3_000 and len(report.claim_txs) == 2 and len(report.errors) == 1
    assert await _onchain_claimed(env, payers) == [1_000, 1_000, 1_000, 0]


# ------------------------------------------------------------ voucher records


async def test_voucher_records_left_by_a_dead_request_are_released_not_reconciled(env: Env) -> None:
    (payer,) = await _channels(env, 5_000)
    await _charge(env, payer, 100)
    # a request that died after its record was opened: nothing was committed
    dead = _voucher_record(env, payer, 300, owner="dead")
    assert (await env.journal.open(dead)).outcome == "new"
    serving = dead.moved(State.SERVING)
    serving.updated_at = now_ms() - STUCK_VOUCHER_MS - 1_000
    assert (await env.journal.advance(serving, [State.CLAIMED]))[0]
    # one still within its reservation's life is left alone
    (other,) = await _channels(env, 5_000)
    live = _voucher_record(env, other, 50, owner="live")
    await env.journal.open(live)

    # the exact-payment reconciler does not touch channel records
    reconciled = await Reconciler(Resolver(env.journal, env.client, None), env.locks).run_once()  # type: ignore[arg-type]
    assert reconciled.examined == 0 and not reconciled.errors
    assert (await env.journal.get(dead.id)).state == State.SERVING  # type: ignore[union-attr]

    report = await env.claimer(threshold=NEVER).run_once()
    assert report.released == 1
    released = await env.journal.get(dead.id)
    assert released is not None and released.state == State.RELEASED and released.reason == "worker_lost"
    assert released.charged == 0
    assert (await env.journal.get(live.id)).state == State.CLAIMED  # type: ignore[union-attr]


async def test_a_stuck_voucher_whose_charge_reached_the_channel_is_not_released(env: Env) -> None:
    (payer,) = await _channels(env, 5_000)
    # the gate committed the charge to the channel, then died before journaling it
    signed_max = 200
    voucher = Voucher(bytes.fromhex(payer.channel_id[2:]), signed_max)
    signature = "0x" + payer.signer.sign_typed_data(batch_settlement_domain(env.chain.chain_id), voucher).hex()
    record = _voucher_record(env, payer, signed_max, owner="gone")
    await env.journal.open(record)
    assert (
        await env.store.reserve(
            payer.channel_id, amount=200, signed_max=200, signature=signature, token="gone", ttl_ms=TTL_MS
        )
    ).ok
    await env.store.commit(payer.channel_id, "gone", 200)
    stuck = record.moved(State.SERVING)
    stuck.updated_at = now_ms() - STUCK_VOUCHER_MS - 1_000
    await env.journal.advance(stuck, [State.CLAIMED])

    report = await env.claimer(threshold=NEVER).run_once()

    assert report.released == 0 and any(record.id in e for e in report.errors)
    assert (await env.journal.get(record.id)).state == State.SERVING  # type: ignore[union-attr]


# ------------------------------------------------------------------ audit


async def test_the_audit_reports_planted_mismatches(env: Env) -> None:
    payers = await _channels(env, 8_000, 8_000)
    await _charge(env, payers[0], 1_000)
    await _charge(env, payers[1], 2_000)
    await env.claimer(threshold=0).run_once()
    await _charge(env, payers[1], 500)  # charged, not claimed yet: reported, not a fault

    report = await audit(env.journal, env.client, env.token.address, env.pay_to, channels=(env.store, env.contract))
    assert report.equal, (report.differences, report.channels)
    assert report.channels is not None and report.channels.unclaimed == 500
    assert report.sweeps == 1 and report.sweeps_total == 3_000  # the settle, kept out of the exact audit
    assert report.differences == []

    # plant: a voucher record the store never charged, and a claim the chain never saw
    ghost = _voucher_record(env, payers[0], 70, owner="ghost")
    ghost.id = f"batch:{payers[0].channel_id}:999999"
    ghost = ghost.moved(State.SETTLED, charged=70, settled_at=now_ms())
    await env.journal.advance(ghost, [])
    fake = claim_record(
        "0x" + "ab" * 32,
        {payers[1].channel_id: (9, 9)},
        network=env.chain.network,
        asset=env.token.address,
        pay_to=env.pay_to,
        state=State.SETTLED,
    )
    await env.journal.advance(fake, [])

    report = await audit(env.journal, env.client, env.token.address, env.pay_to, channels=(env.store, env.contract))
    assert not report.equal and report.differences == []  # the exact side is still clean
    assert report.channels is not None
    found = {(d.kind, d.channel, d.expected, d.actual) for d in report.channels.differences}
    assert found == {
        ("journal_vs_store", payers[0].channel_id, 1_070, 1_000),
        ("claims_vs_chain", "", 3_009, 3_000),
    }
    assert report.to_json()["equal"] is False
    assert report.to_json()["channels"]["differences"][0]["kind"] == "journal_vs_store"


async def test_ledger_audit_command_reports_channel_money(env: Env, tmp_path: Path) -> None:
    payers = await _channels(env, 8_000, 8_000)
    await _charge(env, payers[0], 1_000)
    await _charge(env, payers[1], 2_000)
    await env.claimer(threshold=0).run_once()
    await _charge(env, payers[1], 250)
    table = example_table(env.chain.network, env.token.address, env.pay_to)
    config = write_config(tmp_path, table, REDIS_URL, env.namespace, env.chain.rpc_url)
    cli_env = {**os.environ, GAS_KEY_ENV: env.chain.new_account().unsafe_export_private_key()}

    def audit_cli(*extra: str) -> subprocess.CompletedProcess[str]:
        command = [str(CLI), "ledger", "audit", "--config", str(config), *extra]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, env=cli_env)

    clean = audit_cli()
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "channels: 2" in clean.stdout and "channel differences: 0" in clean.stdout
    assert f"unclaimed: channel {payers[1].channel_id}" in clean.stdout

    # the store charged a request the journal never recorded
    voucher = Voucher(bytes.fromhex(payers[0].channel_id[2:]), 1_400)
    signature = "0x" + payers[0].signer.sign_typed_data(batch_settlement_domain(env.chain.chain_id), voucher).hex()
    await env.store.reserve(
        payers[0].channel_id, amount=400, signed_max=1_400, signature=signature, token="x", ttl_ms=TTL_MS
    )
    await env.store.commit(payers[0].channel_id, "x", 400)

    found = audit_cli("--json")
    assert found.returncode == 1, found.stdout + found.stderr
    doc = json.loads(found.stdout)
    assert doc["equal"] is False and doc["differences"] == []
    assert doc["channels"]["differences"] == [
        {
            "kind": "journal_vs_store",
            "channel": payers[0].channel_id,
            "expected": "1000",
            "actual": "1400",
            "note": "a voucher record lost, or a charge not journaled",
        }
    ]
    text = audit_cli()
    assert text.returncode == 1 and "voucher records vs the store's charged" in text.stdout


def test_channel_counts_are_compared_row_by_row() -> None:
    a, b, c = ("0x" + ch * 64 for ch in "abc")
    report = ChannelAuditReport(
        channels=[
            # unclaimed: fine
            ChannelRow(a, journal_charged=500, store_charged=500, claimed=100, balance=1_000, journal_balance=1_000),
            # withdrawn first, the withdrawal not journaled yet
            ChannelRow(b, journal_charged=900, store_charged=900, claimed=400, balance=400, journal_balance=1_000),
            # refunded short
            ChannelRow(c, journal_charged=300, store_charged=None, claimed=250, balance=250, journal_balance=250),
        ],
        claims_journal=750,
        claimed_chain=750,
        settles_journal=700,
        settled_chain=750,
        pending=["0x" + "01" * 32],
    )
    found = [(d.kind, d.channel, d.expected, d.actual) for d in compare_channels(report)]
    assert found == [
        ("balance_vs_chain", b, 1_000, 400),
        ("charged_above_balance", b, 900, 400),
        ("journal_vs_chain", c, 300, 250),
        ("settles_vs_chain", "", 700, 750),
    ]
    assert compare_channels(report)[-1].note == "1 transactions still in doubt"
    assert report.unclaimed == 400 + 500 + 50 and report.charged == 1_700


def test_claimer_refuses_a_fractional_threshold() -> None:
    with pytest.raises(ValueError, match="threshold"):
        Claimer(None, None, None, None, "", "", 1.0, 0.5, chain=None, network="")  # type: ignore[arg-type]


def test_stuck_voucher_limit_outlives_any_reservation() -> None:
    # the gate clamps a reservation to 5 s..10 min; a record older than that has no worker
    assert STUCK_VOUCHER_MS > 10 * 60_000


async def test_through_the_official_facilitator_a_batch_too_big_for_its_gas_is_split(env: Env) -> None:
    # the official facilitator sends every transaction with 500,000 gas: 30 rows run out
    # of it on chain, so the claimer halves the batch; 15 rows (the default here) fit
    app, calls = facilitator_app(
        env.chain.new_account().unsafe_export_private_key(), env.chain.rpc_url, env.chain.network, "t", channels=True
    )
    payers = [await _open_channel(env, 1_000) for _ in range(31)]
    for i, payer in enumerate(payers):
        await _charge(env, payer, 1 + i)
    with serve_in_thread(app) as url:
        remote = RemoteFacilitator(url, {"*": {"Authorization": "Bearer t"}})
        reader = BatchSettlementContract(env.client, None, env.chain.chain_id)
        try:
            for rows, sent in ((30, 5), (FACILITATOR_CLAIM_ROWS, 4)):
                unclaimed = sum(p.charged for p in payers) - sum(await _onchain_claimed(env, payers))
                before = calls["settle"]
                settler = FacilitatorSettler(
                    remote, reader, env.client, env.chain.network, env.authorizer.address, env.authorizer, 30, rows
                )
                claimer = Claimer(
                    env.store, settler, env.journal, env.locks, env.pay_to, env.token.address, 3600.0, 0,
                    chain=env.client, network=env.chain.network,
                )  # fmt: skip
                report = await claimer.run_once()
                assert report.errors == [] and report.claimed == unclaimed == report.settled, report
                claims = [await _claim(env, tx) for tx in report.claim_txs]
                assert sorted(len(claim_deltas(c)) for c in claims) == [1, 15, 15]
                # 30 rows: the batch mined and reverted (gas spent, nothing claimed), then 15, 15, 1, settle
                assert calls["settle"] - before == sent
                assert await _onchain_claimed(env, payers) == [p.charged for p in payers]
                for payer in payers:  # one more call each for the next round
                    await _charge(env, payer, 1)
        finally:
            await remote.close()
    assert env.token.balance_of(env.pay_to) == sum(p.charged for p in payers) - len(payers)


async def _claim(env: Env, tx: str) -> PaymentRecord:
    record = await env.journal.get(f"batch-claim:{tx}")
    assert record is not None and record.state == State.SETTLED
    return record
