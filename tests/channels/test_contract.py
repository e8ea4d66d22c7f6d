"""BatchSettlementContract on a real anvil: deposits, reads, batch claims, settle and refunds.

Payers sign with `wallets` (the ERC-3009 deposit authorization and vouchers); we sign claim
batches and refunds as the receiver authorizer and pay gas from a separate gas wallet. Token
balances are checked exactly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from eth_typing import HexStr
from eth_utils.abi import function_abi_to_4byte_selector
from eth_utils.crypto import keccak
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig as SdkChannelConfig
from x402.mechanisms.evm.batch_settlement.utils import compute_channel_id

from payrouter.artifacts import load_artifact
from payrouter.chain import ChainClient, RevertError
from payrouter.channels.contract import (
    _ERROR_BY_SELECTOR,
    _FUNCTIONS,
    MAX_CLAIMS_PER_BATCH,
    BatchSettlementContract,
    ChannelTxFailed,
    ChannelTxInDoubt,
    ClaimRow,
    Erc3009Deposit,
    OnchainChannel,
    decode_revert,
)
from payrouter.devchain import DevChain, DevToken
from payrouter.facilitator.sender import GasSender
from payrouter.sandbox.rpc_faults import RpcFaultProxy
from payrouter.store import MemoryStore
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


@pytest.fixture(scope="module")
def installed(chain: DevChain) -> DevChain:
    chain.install_batch_settlement()
    return chain


@dataclass
class Env:
    chain: DevChain
    token: DevToken
    contract: BatchSettlementContract
    gas: LocalSigner
    receiver: LocalSigner
    authorizer: LocalSigner


@pytest.fixture
async def env(installed: DevChain, token: DevToken) -> AsyncIterator[Env]:
    client = ChainClient(installed.rpc_url)
    gas = installed.new_account()
    sender = GasSender(client, gas, MemoryStore(), installed.chain_id)
    contract = BatchSettlementContract(client, sender, installed.chain_id)
    yield Env(installed, token, contract, gas, installed.new_account(0), installed.new_account(0))
    await client.close()


@dataclass
class Payer:
    signer: LocalSigner
    config: ChannelConfig
    chain_id: int

    @property
    def channel_id(self) -> bytes:
        return self.config.channel_id(self.chain_id)

    def voucher(self, max_claimable: int) -> bytes:
        return self.signer.sign_typed_data(
            batch_settlement_domain(self.chain_id), Voucher(self.channel_id, max_claimable)
        )

    def row(self, max_claimable: int, total: int) -> ClaimRow:
        return ClaimRow(self.config, max_claimable, self.voucher(max_claimable), total)


def _payer(env: Env, fund: int, salt: bytes = b"\x01" * 32) -> Payer:
    signer = env.chain.new_account(0)
    env.token.mint(signer.address, fund)
    config = ChannelConfig(
        payer=signer.address,
        payer_authorizer=signer.address,
        receiver=env.receiver.address,
        receiver_authorizer=env.authorizer.address,
        token=env.token.address,
        withdraw_delay=900,
        salt=salt,
    )
    return Payer(signer, config, env.chain.chain_id)


def _erc3009(env: Env, payer: Payer, amount: int, salt: int = 7, signer: LocalSigner | None = None) -> Erc3009Deposit:
    now = env.chain.w3.eth.get_block("latest")["timestamp"]
    auth = ReceiveWithAuthorization(
        payer.signer.address,
        ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
        amount,
        0,
        now + 3600,
        deposit_nonce(payer.channel_id, salt),
    )
    if signer is None:
        signature = sign_authorization(payer.signer, env.token.domain, auth)
    else:
        signature = signer.sign_typed_data(env.token.domain, auth)  # a wrong key
    return Erc3009Deposit(auth.valid_after, auth.valid_before, salt, signature)


async def _deposited(env: Env, fund: int, amount: int, salt: bytes = b"\x01" * 32) -> Payer:
    payer = _payer(env, fund, salt)
    erc3009 = _erc3009(env, payer, amount)
    await env.contract.simulate_deposit(payer.config, amount, erc3009)
    tx = await env.contract.deposit(payer.config, amount, erc3009)
    assert tx.startswith("0x") and len(tx) == 66
    return payer


# ------------------------------------------------------------------ encoding


def test_selectors_and_errors_match_the_artifacts() -> None:
    abi = load_artifact("BatchSettlement")["abi"]
    by_name = {item["name"]: item for item in abi if item["type"] == "function"}
    for name, (selector, _types) in _FUNCTIONS.items():
        assert function_abi_to_4byte_selector(by_name[name]) == selector, name
    errors = abi + load_artifact("ERC3009DepositCollector")["abi"]
    constructor_only = {"InvalidShortString", "StringTooLong"}
    for item in (e for e in errors if e["type"] == "error" and e["name"] not in constructor_only):
        signature = f"{item['name']}({','.join(i['type'] for i in item['inputs'])})"
        assert keccak(text=signature)[:4] in _ERROR_BY_SELECTOR, signature


def test_channel_id_is_what_the_sdk_computes(chain: DevChain) -> None:
    a, b = "0x" + "12" * 20, "0x" + "34" * 20
    config = ChannelConfig(a, a, b, b, "0x" + "56" * 20, 900, b"\x09" * 32)
    expected = compute_channel_id(SdkChannelConfig.from_dict(config.to_wire()), chain.chain_id)
    assert "0x" + config.channel_id(chain.chain_id).hex() == expected


def test_decode_revert_reads_raw_data_and_anvil_messages() -> None:
    data = keccak(text="InvalidRefundNonce(uint256,uint256)")[:4] + (1).to_bytes(32, "big") + bytes(32)
    exc = RevertError("custom error 0x" + data[:4].hex())
    exc.data = "0x" + data.hex()  # type: ignore[attr-defined]
    assert decode_revert(exc) == ("InvalidRefundNonce(expected=1, given=0)", "InvalidRefundNonce")
    lossy = RevertError("custom error 0x" + data[:4].hex() + ": \ufffd\x00")
    assert decode_revert(lossy) == ("InvalidRefundNonce(…)", "InvalidRefundNonce")
    assert decode_revert(RevertError("ERC20: transfer amount exceeds balance")) == (
        "ERC20: transfer amount exceeds balance",
        None,
    )


# ------------------------------------------------------------- on the chain


async def test_unknown_channel_reads_as_zeros(env: Env) -> None:
    assert await env.contract.channel(b"\x42" * 32) == OnchainChannel(0, 0, 0, 0, 0)
    assert await env.contract.receiver_totals(env.receiver.address, env.token.address) == (0, 0)
    assert await env.contract.settle(env.receiver.address, env.token.address) == ("", 0)


async def test_deposit_claim_settle_refund(env: Env) -> None:
    contract, token = env.contract, env.token
    amounts = [100_000, 50_000, 70_000]
    payers = [await _deposited(env, 1_000_000, a, salt=bytes([i + 1]) * 32) for i, a in enumerate(amounts)]
    for payer, amount in zip(payers, amounts, strict=True):
        assert token.balance_of(payer.signer.address) == 1_000_000 - amount
        assert await contract.channel(payer.channel_id) == OnchainChannel(amount, 0, 0, 0, 0)
    assert token.balance_of(BATCH_SETTLEMENT_ADDRESS) >= sum(amounts)

    # payers signed cumulative vouchers; we claim a little less than each in one batch
    claims = [(30_000, 25_000), (50_000, 50_000), (12_345, 10_000)]
    rows = [p.row(m, t) for p, (m, t) in zip(payers, claims, strict=True)]
    tx = await contract.claim_with_signature(rows, env.authorizer)
    assert tx.startswith("0x")
    states = await contract.channels([p.channel_id for p in payers])
    assert [states[p.channel_id].total_claimed for p in payers] == [t for _, t in claims]
    assert [states[p.channel_id].balance for p in payers] == amounts
    claimed = sum(t for _, t in claims)
    assert await contract.receiver_totals(env.receiver.address, token.address) == (claimed, 0)

    # replaying the same batch is harmless: rows at or below the onchain total are skipped
    await contract.claim_with_signature(rows, env.authorizer)
    assert await contract.receiver_totals(env.receiver.address, token.address) == (claimed, 0)

    before = token.balance_of(env.receiver.address)
    tx, paid = await contract.settle(env.receiver.address, token.address)
    assert tx and paid == claimed
    assert token.balance_of(env.receiver.address) == before + claimed
    assert await contract.receiver_totals(env.receiver.address, token.address) == (claimed, claimed)
    assert await contract.settle(env.receiver.address, token.address) == ("", 0)

    # refund the first channel: claim its latest voucher and return the rest, atomically
    first = payers[0]
    payer_before = token.balance_of(first.signer.address)
    done = await contract.refund(first.config, 10**9, 0, [first.row(40_000, 40_000)], env.authorizer)
    tx, refunded = done.tx, done.refunded
    assert refunded == 100_000 - 40_000
    assert token.balance_of(first.signer.address) == payer_before + refunded
    assert await contract.channel(first.channel_id) == OnchainChannel(40_000, 40_000, 0, 0, 1)

    # a refund without claim rows returns exactly balance - claimed of the second channel...
    third = payers[2]
    payer_before = token.balance_of(third.signer.address)
    refunded = (await contract.refund(third.config, 10**9, 0, [], env.authorizer)).refunded
    assert refunded == 70_000 - 10_000
    assert token.balance_of(third.signer.address) == payer_before + refunded
    # ...and a channel with nothing left refunds 0 but spends the nonce
    refunded = (await contract.refund(third.config, 1, 1, [], env.authorizer)).refunded
    assert refunded == 0
    assert (await contract.channel(third.channel_id)).refund_nonce == 2

    # the extra claim of the refund is owed to the receiver now
    tx, paid = await contract.settle(env.receiver.address, token.address)
    assert paid == 15_000
    assert token.balance_of(env.receiver.address) == before + claimed + 15_000


async def test_claim_above_the_balance_is_refused_before_sending(env: Env) -> None:
    payer = await _deposited(env, 500_000, 100_000)
    nonce = env.chain.w3.eth.get_transaction_count(env.gas.address)
    with pytest.raises(ChannelTxFailed) as info:
        await env.contract.claim_with_signature([payer.row(200_000, 150_000)], env.authorizer)
    assert info.value.error == "ClaimAboveBalance"
    assert info.value.reason.startswith("ClaimAboveBalance(")
    assert info.value.tx == ""
    with pytest.raises(ChannelTxFailed) as info:
        await env.contract.claim_with_signature([payer.row(50_000, 60_000)], env.authorizer)
    assert info.value.error == "ClaimAboveVoucher"
    other = _payer(env, 0)  # signs a voucher for a channel that is not its own
    forged = ClaimRow(payer.config, 50_000, other.voucher(50_000), 50_000)
    with pytest.raises(ChannelTxFailed) as info:
        await env.contract.claim_with_signature([forged], env.authorizer)
    assert info.value.error == "InvalidVoucherSignature"
    assert env.chain.w3.eth.get_transaction_count(env.gas.address) == nonce  # no gas spent
    assert (await env.contract.channel(payer.channel_id)).total_claimed == 0


async def test_refund_with_a_stale_nonce_names_both_nonces(env: Env) -> None:
    payer = await _deposited(env, 500_000, 100_000)
    with pytest.raises(ChannelTxFailed) as info:
        await env.contract.refund(payer.config, 1_000, 3, [], env.authorizer)
    assert info.value.reason == "InvalidRefundNonce(expected=0, given=3)"


async def test_bad_deposit_authorization_is_refused_in_simulation(env: Env) -> None:
    payer = _payer(env, 100_000)
    bad = _erc3009(env, payer, 50_000, signer=LocalSigner.generate())
    with pytest.raises(ChannelTxFailed) as info:
        await env.contract.simulate_deposit(payer.config, 50_000, bad)
    assert info.value.tx == "" and info.value.reason
    with pytest.raises(ChannelTxFailed):
        await env.contract.deposit(payer.config, 50_000, bad)
    too_much = _erc3009(env, payer, 200_000)
    with pytest.raises(ChannelTxFailed):
        await env.contract.simulate_deposit(payer.config, 200_000, too_much)
    assert env.token.balance_of(payer.signer.address) == 100_000
    assert await env.contract.channel(payer.channel_id) == OnchainChannel(0, 0, 0, 0, 0)


async def test_claim_batches_are_checked_before_signing(env: Env) -> None:
    payer = _payer(env, 0)
    row = payer.row(10, 10)
    with pytest.raises(ValueError, match="at most 100"):
        await env.contract.claim_with_signature([row] * (MAX_CLAIMS_PER_BATCH + 1), env.authorizer)
    with pytest.raises(ValueError, match="at least one"):
        await env.contract.claim_with_signature([], env.authorizer)
    with pytest.raises(ValueError, match="receiverAuthorizer"):
        await env.contract.claim_with_signature([row], LocalSigner.generate())
    with pytest.raises(ValueError, match="receiverAuthorizer"):
        await env.contract.refund(payer.config, 10, 0, [], LocalSigner.generate())


async def test_a_full_batch_of_100_channels_is_claimed_in_one_transaction(env: Env) -> None:
    payers = [await _deposited(env, 1_000, 1_000, salt=i.to_bytes(32, "big")) for i in range(MAX_CLAIMS_PER_BATCH)]
    await env.contract.claim_with_signature([p.row(1_000, 1_000) for p in payers], env.authorizer)
    states = await env.contract.channels([p.channel_id for p in payers])
    assert all(s.total_claimed == 1_000 for s in states.values()) and len(states) == MAX_CLAIMS_PER_BATCH
    _, paid = await env.contract.settle(env.receiver.address, env.token.address)
    assert paid == 1_000 * MAX_CLAIMS_PER_BATCH
    assert env.token.balance_of(env.receiver.address) == paid


async def test_a_transaction_reverting_on_chain_is_reported_with_its_hash(env: Env) -> None:
    # our refund passes simulation and is sent; before it is mined, a rival sends the very same
    # call (anyone may) with a higher tip, so it is mined first and ours reverts on chain
    payer = await _deposited(env, 10_000, 10_000)
    env.chain.rpc("evm_setAutomine", [False])
    try:
        task = asyncio.create_task(env.contract.refund(payer.config, 1_000, 0, [], env.authorizer))
        deadline = time.monotonic() + 15
        while True:
            block = env.chain.rpc("eth_getBlockByNumber", ["pending", True])
            ours = [t for t in block["transactions"] if t["from"].lower() == env.gas.address.lower()]
            if ours:
                break
            assert time.monotonic() < deadline, "our refund was not sent"
            await asyncio.sleep(0.01)
        rival = env.chain.new_account()
        env.chain.rpc("anvil_impersonateAccount", [rival.address])
        tip = 10 * int(ours[0]["maxPriorityFeePerGas"], 16)
        rival_tx = {
            "from": rival.address,
            "to": ours[0]["to"],
            "input": ours[0]["input"],
            "gas": ours[0]["gas"],
            "maxPriorityFeePerGas": hex(tip),
            "maxFeePerGas": hex(int(ours[0]["maxFeePerGas"], 16) + tip),
        }
        rival_hash = env.chain.rpc("eth_sendTransaction", [rival_tx])
        env.chain.rpc("evm_mine", [])
        result = await asyncio.gather(task, return_exceptions=True)
    finally:
        env.chain.rpc("evm_setAutomine", [True])
    failed = result[0]
    assert isinstance(failed, ChannelTxFailed), result
    assert failed.tx == ours[0]["hash"] and failed.tx != rival_hash
    assert failed.reason == "reverted on chain: InvalidRefundNonce(expected=1, given=0)"
    assert await env.contract.channel(payer.channel_id) == OnchainChannel(9_000, 0, 0, 0, 1)


@pytest.mark.parametrize(("mode", "why"), [("lose_send", "reply lost"), ("hide_receipt", "not mined in time")])
async def test_a_claim_whose_outcome_is_unknown_is_in_doubt_with_its_hash(env: Env, mode: str, why: str) -> None:
    payer = await _deposited(env, 10_000, 10_000)
    async with RpcFaultProxy(env.chain.rpc_url) as proxy:
        client = ChainClient(proxy.url)
        try:
            sender = GasSender(client, env.gas, MemoryStore(), env.chain.chain_id)
            contract = BatchSettlementContract(client, sender, env.chain.chain_id, receipt_timeout=0.2)
            proxy.set_mode(mode)
            with pytest.raises(ChannelTxInDoubt, match=why) as info:
                await contract.claim_with_signature([payer.row(4_000, 4_000)], env.authorizer)
        finally:
            await client.close()
    # it was taken: the hash in the error is the claim that landed
    assert env.chain.w3.eth.wait_for_transaction_receipt(HexStr(info.value.tx), timeout=10)["status"] == 1
    assert (await env.contract.channel(payer.channel_id)).total_claimed == 4_000


async def test_reinstalling_the_contracts_keeps_their_state(env: Env) -> None:
    payer = await _deposited(env, 10_000, 10_000)
    env.chain.install_batch_settlement()
    assert await env.contract.channel(payer.channel_id) == OnchainChannel(10_000, 0, 0, 0, 0)


async def test_read_only_instance_refuses_writes(env: Env) -> None:
    reader = BatchSettlementContract(ChainClient(env.chain.rpc_url), None, env.chain.chain_id)
    try:
        payer = _payer(env, 0)
        with pytest.raises(RuntimeError, match="read-only"):
            await reader.claim_with_signature([payer.row(1, 1)], env.authorizer)
        assert "key" not in repr(reader).lower()
    finally:
        await reader._chain.close()
