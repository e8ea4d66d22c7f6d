"""The batch-settlement contracts on a real anvil, signed with the official x402 SDK.

``BatchSettlement`` and ``ERC3009DepositCollector`` are installed at the canonical addresses
the SDK hard-codes (``anvil_setCode``), so every signature here comes from the SDK's own client
and authorizer code: a deposit authorization, vouchers, claim batches and refunds the contract
accepts are what the official clients produce. Amounts are integers; balances are exact.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils.crypto import keccak
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractLogicError
from web3.logs import DISCARD
from web3.types import TxReceipt
from x402.mechanisms.evm.batch_settlement import constants as sdk_constants
from x402.mechanisms.evm.batch_settlement.abi import BATCH_SETTLEMENT_ABI
from x402.mechanisms.evm.batch_settlement.authorizer_signer import (
    LocalAuthorizerSigner,
    sign_claim_batch,
    sign_refund,
)
from x402.mechanisms.evm.batch_settlement.client.channel import read_channel_balance_and_total_claimed
from x402.mechanisms.evm.batch_settlement.client.eip3009 import create_batch_settlement_eip3009_deposit_payload
from x402.mechanisms.evm.batch_settlement.client.voucher import sign_voucher
from x402.mechanisms.evm.batch_settlement.encoding import build_erc3009_collector_data
from x402.mechanisms.evm.batch_settlement.facilitator.claim import execute_claim_with_signature
from x402.mechanisms.evm.batch_settlement.facilitator.settle import execute_settle
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig, ClaimPayload, SettlePayload, VoucherClaim
from x402.mechanisms.evm.batch_settlement.utils import compute_channel_id, get_batch_settlement_eip712_domain
from x402.mechanisms.evm.signers import EthAccountSigner, EthAccountSignerWithRPC, FacilitatorWeb3Signer
from x402.schemas import PaymentRequirements

from payrouter.artifacts import load_artifact
from payrouter.devchain import DevChain, DevChainError, DevToken
from wallets import LocalSigner

SETTLEMENT = Web3.to_checksum_address(sdk_constants.BATCH_SETTLEMENT_ADDRESS)
COLLECTOR = Web3.to_checksum_address(sdk_constants.ERC3009_DEPOSIT_COLLECTOR_ADDRESS)
ZERO = "0x0000000000000000000000000000000000000000"
ZERO32 = "0x" + "00" * 32
DELAY = 900


# ------------------------------------------------------------------ set-up


@dataclass
class Deployed:
    chain: DevChain
    token: DevToken
    settlement: Contract
    collector: Contract


@pytest.fixture(scope="module")
def bs(chain: DevChain, token: DevToken) -> Deployed:
    assert chain.install_batch_settlement() == (SETTLEMENT, COLLECTOR)
    w3 = chain.w3
    return Deployed(
        chain,
        token,
        w3.eth.contract(address=SETTLEMENT, abi=load_artifact("BatchSettlement")["abi"]),
        w3.eth.contract(address=COLLECTOR, abi=load_artifact("ERC3009DepositCollector")["abi"]),
    )


@pytest.fixture
def rewind(chain: DevChain) -> Iterator[None]:
    """Undo a test's time travel (and its state) so later tests sign against wall-clock time."""
    snapshot = chain.rpc("evm_snapshot", [])
    yield
    chain.rpc("evm_revert", [snapshot])


def _sdk(signer: LocalSigner) -> EthAccountSigner:
    """The SDK's own client signer over the same key."""
    return EthAccountSigner(Account.from_key(signer.unsafe_export_private_key()))


@dataclass
class Channel:
    bs: Deployed
    payer: LocalSigner
    receiver: LocalSigner
    authorizer: LocalSigner  # the receiver authorizer
    payer_authorizer: str
    delay: int = DELAY
    salt: str = ZERO32

    @property
    def sdk_config(self) -> ChannelConfig:
        return ChannelConfig(
            payer=self.payer.address,
            payer_authorizer=self.payer_authorizer,
            receiver=self.receiver.address,
            receiver_authorizer=self.authorizer.address,
            token=self.bs.token.address,
            withdraw_delay=self.delay,
            salt=self.salt,
        )

    @property
    def config(self) -> tuple[Any, ...]:
        return _config_tuple(self.sdk_config)

    @property
    def id(self) -> bytes:
        return _b32(compute_channel_id(self.sdk_config, self.bs.chain.network))

    def state(self) -> tuple[int, int]:
        balance, claimed = self.bs.settlement.functions.channels(self.id).call()
        return balance, claimed

    def voucher(self, max_claimable: int, signer: LocalSigner | None = None) -> bytes:
        fields = sign_voucher(_sdk(signer or self.payer), "0x" + self.id.hex(), max_claimable, self.bs.chain.network)
        return _b32(fields.signature)

    def claim_row(self, max_claimable: int, total: int, signature: bytes | None = None) -> tuple[Any, ...]:
        sig = self.voucher(max_claimable) if signature is None else signature
        return ((self.config, max_claimable), sig, total)

    def sdk_claim(self, row: tuple[Any, ...]) -> VoucherClaim:
        (_, max_claimable), sig, total = row
        return VoucherClaim(self.sdk_config, str(max_claimable), "0x" + sig.hex(), str(total))


def _config_tuple(c: ChannelConfig) -> tuple[Any, ...]:
    """The ChannelConfig struct as web3 takes it."""
    addresses = (c.payer, c.payer_authorizer, c.receiver, c.receiver_authorizer, c.token)
    return (*(Web3.to_checksum_address(a) for a in addresses), c.withdraw_delay, _b32(c.salt))


def _b32(value: str) -> bytes:
    return bytes.fromhex(value.removeprefix("0x"))


def _channel(bs: Deployed, *, payer_authorizer: bool = True, fund: int = 1_000_000, **kw: Any) -> Channel:
    payer = bs.chain.new_account()
    bs.token.mint(payer.address, fund)
    return Channel(
        bs,
        payer,
        bs.chain.new_account(),
        bs.chain.new_account(),
        payer.address if payer_authorizer else ZERO,
        salt="0x" + os.urandom(32).hex(),
        **kw,
    )


def _send(bs: Deployed, sender: LocalSigner, call: Any) -> TxReceipt:
    return bs.chain.send(sender, {"to": SETTLEMENT, "data": call._encode_transaction_data()})


def _reverts(call: Any, sender: str, error: str) -> None:
    """``call`` reverts (eth_call from ``sender``) with custom error ``error`` or revert text ``error``."""
    with pytest.raises(ContractLogicError) as info:
        call.call({"from": sender})
    if "(" in error:
        selector = "0x" + keccak(text=error)[:4].hex()
        assert str(info.value.data).startswith(selector), (error, info.value)
    else:
        assert error in str(info.value), info.value


def _deposit_call(ch: Channel, amount: int, *, sign_amount: int | None = None) -> Any:
    """``deposit`` with an ERC-3009 authorization made by the SDK's client deposit code."""
    requirements = PaymentRequirements(
        scheme="batch-settlement",
        network=ch.bs.chain.network,
        asset=ch.bs.token.address,
        amount="1",
        pay_to=ch.receiver.address,
        max_timeout_seconds=300,
        extra={"name": "USD Coin", "version": "2", "receiverAuthorizer": ch.authorizer.address, "withdrawDelay": 900},
    )
    payload = create_batch_settlement_eip3009_deposit_payload(
        _sdk(ch.payer), requirements, ch.sdk_config, sign_amount or amount, 1
    )
    assert payload.deposit is not None
    auth = payload.deposit.authorization.erc3009_authorization
    assert auth is not None
    data = build_erc3009_collector_data(auth.valid_after, auth.valid_before, auth.salt, auth.signature)
    return ch.bs.settlement.functions.deposit(ch.config, amount, COLLECTOR, data)


def _deposit(ch: Channel, amount: int, relayer: LocalSigner | None = None) -> TxReceipt:
    return _send(ch.bs, relayer or ch.bs.chain.deployer, _deposit_call(ch, amount))


def _claim(ch: Channel, rows: list[tuple[Any, ...]], sender: LocalSigner | None = None) -> TxReceipt:
    return _send(ch.bs, sender or ch.receiver, ch.bs.settlement.functions.claim(rows))


def _receiver_state(ch: Channel) -> tuple[int, int]:
    claimed, settled = ch.bs.settlement.functions.receivers(ch.receiver.address, ch.bs.token.address).call()
    return claimed, settled


# ------------------------------------------------------- SDK compatibility


def _type_string(types: dict[str, list[dict[str, str]]], primary: str) -> str:
    """EIP-712 ``encodeType``: the primary type, then the referenced struct types sorted by name."""

    def fields(name: str) -> str:
        members = ",".join(f"{f['type']} {f['name']}" for f in types[name])
        return f"{name}({members})"

    referenced = sorted({f["type"].removesuffix("[]") for f in types[primary]} & set(types) - {primary})
    return fields(primary) + "".join(fields(name) for name in referenced)


def test_type_hashes_and_domain_match_the_sdk(bs: Deployed) -> None:
    fns = bs.settlement.functions
    assert fns.CHANNEL_CONFIG_TYPEHASH().call() == sdk_constants.CHANNEL_CONFIG_TYPEHASH
    assert _type_string(sdk_constants.CHANNEL_CONFIG_TYPES, "ChannelConfig") == sdk_constants.CHANNEL_CONFIG_TYPE_STRING
    expected = {
        fns.VOUCHER_TYPEHASH: (sdk_constants.VOUCHER_TYPES, "Voucher"),
        fns.REFUND_TYPEHASH: (sdk_constants.REFUND_TYPES, "Refund"),
        fns.CLAIM_BATCH_TYPEHASH: (sdk_constants.CLAIM_BATCH_TYPES, "ClaimBatch"),
        fns.CLAIM_ENTRY_TYPEHASH: (sdk_constants.CLAIM_BATCH_TYPES, "ClaimEntry"),
    }
    for getter, (types, primary) in expected.items():
        assert getter().call() == keccak(text=_type_string(types, primary)), primary
    sdk_domain = encode_typed_data(
        domain_data=get_batch_settlement_eip712_domain(bs.chain.chain_id),
        message_types=sdk_constants.VOUCHER_TYPES,
        message_data={"channelId": bytes(32), "maxClaimableAmount": 0},
    ).header
    assert fns.DOMAIN_SEPARATOR().call() == sdk_domain
    if bs.chain.chain_id == 31337:  # the brief's test vector
        assert sdk_domain.hex() == "bf720f8d28a5c76a2f7743512598984fa4b90dd1efdb19af73f64cc6587d68af"


def test_functions_and_event_match_the_sdk_abi() -> None:
    def sig(entry: dict[str, Any]) -> str:
        def kind(p: dict[str, Any]) -> str:
            if p["type"].startswith("tuple"):
                inner = ",".join(kind(c) for c in p["components"])
                return f"({inner}){str(p['type']).removeprefix('tuple')}"
            return str(p["type"])

        outputs = ",".join(kind(p) for p in entry.get("outputs", []))
        indexed = ",".join(str(p["indexed"]) for p in entry["inputs"]) if entry["type"] == "event" else ""
        return f"{entry['type']} {entry['name']}({','.join(kind(p) for p in entry['inputs'])})->{outputs}|{indexed}"

    ours = {sig(e) for e in load_artifact("BatchSettlement")["abi"] if e["type"] in ("function", "event")}
    for entry in BATCH_SETTLEMENT_ABI:
        assert sig(entry) in ours, entry["name"]
    collector = {sig(e) for e in load_artifact("ERC3009DepositCollector")["abi"] if e["type"] == "function"}
    assert "function collect(address,address,uint256,bytes32,bytes)->|" in collector


def test_channel_id_is_the_sdk_derivation(bs: Deployed) -> None:
    get_id = bs.settlement.functions.getChannelId
    vector = ChannelConfig(
        "0x" + "11" * 20, "0x" + "11" * 20, "0x" + "22" * 20, "0x" + "33" * 20, "0x" + "44" * 20, 900, ZERO32
    )
    as_tuple = _config_tuple(vector)
    assert get_id(as_tuple).call() == _b32(compute_channel_id(vector, bs.chain.network))
    if bs.chain.chain_id == 31337:
        assert get_id(as_tuple).call().hex() == "c9c5c364f181fb1299a4933aeee223de83b10bb5d1e3bfa5778b015913d5a030"
    ch = _channel(bs, payer_authorizer=False, delay=12_345)
    assert get_id(ch.config).call() == ch.id


# ----------------------------------------------------------------- deposit


def test_deposit_with_an_sdk_signed_authorization_moves_exactly_the_amount(bs: Deployed) -> None:
    ch = _channel(bs)
    relayer = bs.chain.new_account()
    before = bs.token.balance_of(SETTLEMENT)
    _deposit(ch, 250_000, relayer)
    assert ch.state() == (250_000, 0)
    assert bs.token.balance_of(ch.payer.address) == 750_000
    assert bs.token.balance_of(SETTLEMENT) == before + 250_000
    assert bs.token.balance_of(COLLECTOR) == 0
    _deposit(ch, 1)  # a top-up adds to the same channel
    assert ch.state() == (250_001, 0)
    assert bs.token.balance_of(ch.payer.address) == 749_999


def test_deposit_bounds(bs: Deployed) -> None:
    ch = _channel(bs)
    who = bs.chain.deployer.address
    for delay in (899, 2_592_001):
        _reverts(
            _deposit_call(Channel(bs, ch.payer, ch.receiver, ch.authorizer, ch.payer_authorizer, delay), 10),
            who,
            "InvalidWithdrawDelay(uint40)",
        )
    for delay in (900, 2_592_000):
        _deposit_call(Channel(bs, ch.payer, ch.receiver, ch.authorizer, ch.payer_authorizer, delay), 10).call(
            {"from": who}
        )
    _reverts(_deposit_call(ch, 0), who, "ZeroAmount()")
    fns = bs.settlement.functions
    good = _deposit_call(ch, 10)
    for index in (0, 2, 3, 4):  # payer, receiver, receiverAuthorizer, token
        config = list(ch.config)
        config[index] = ZERO
        _reverts(fns.deposit(tuple(config), 10, COLLECTOR, good.args[3]), who, "InvalidChannelConfig()")
    _reverts(fns.deposit(ch.config, 10, ch.receiver.address, good.args[3]), who, "InvalidCollector()")
    # a collector that returns without delivering the tokens (its code is a bare STOP)
    idle = bs.chain.new_account().address
    bs.chain.rpc("anvil_setCode", [idle, "0x00"])
    _reverts(fns.deposit(ch.config, 10, idle, good.args[3]), who, "DepositShortfall(uint256,uint256)")
    # the authorization covers one amount and one channel
    _reverts(_deposit_call(ch, 11, sign_amount=10), who, "FiatTokenV2: invalid signature")
    other = Channel(bs, ch.payer, ch.receiver, ch.authorizer, ch.payer_authorizer, salt="0x" + "ab" * 32)
    _reverts(fns.deposit(other.config, 10, COLLECTOR, good.args[3]), who, "FiatTokenV2: invalid signature")
    _send(bs, bs.chain.deployer, good)
    _reverts(good, who, "FiatTokenV2: authorization is used or canceled")
    assert ch.state() == (10, 0)
    # only the settlement contract may drive the collector
    _reverts(
        bs.collector.functions.collect(ch.payer.address, bs.token.address, 10, ch.id, good.args[3]),
        who,
        "OnlySettlement()",
    )
    # a payer without the funds: the token refuses, nothing is credited
    poor = _channel(bs, fund=5)
    _reverts(_deposit_call(poor, 6), who, "ERC20: transfer amount exceeds balance")


# ------------------------------------------------------------------ claims


def test_claims_are_monotone_and_capped_by_voucher_and_balance(bs: Deployed) -> None:
    ch = _channel(bs)
    _deposit(ch, 100_000)
    _claim(ch, [ch.claim_row(30_000, 10_000)])
    assert ch.state() == (100_000, 10_000)
    assert _receiver_state(ch) == (10_000, 0)
    _claim(ch, [ch.claim_row(30_000, 25_000)])
    assert ch.state() == (100_000, 25_000)
    # at or below what is claimed: skipped, not reverted, nothing changes
    receipt = _claim(ch, [ch.claim_row(30_000, 20_000), ch.claim_row(30_000, 25_000)])
    assert receipt["logs"] == []
    assert ch.state() == (100_000, 25_000)
    claim = bs.settlement.functions.claim
    _reverts(claim([ch.claim_row(30_000, 30_001)]), ch.receiver.address, "ClaimAboveVoucher(bytes32,uint128,uint128)")
    _reverts(claim([ch.claim_row(200_000, 100_001)]), ch.receiver.address, "ClaimAboveBalance(bytes32,uint128,uint128)")
    _claim(ch, [ch.claim_row(200_000, 100_000)], ch.authorizer)  # the authorizer may claim too
    assert ch.state() == (100_000, 100_000)  # claims never lower the balance
    assert _receiver_state(ch) == (100_000, 0)
    assert bs.token.balance_of(ch.receiver.address) == 0  # nothing moves before settle


def test_claim_needs_the_payer_sides_signature_and_the_receivers_call(bs: Deployed) -> None:
    ch = _channel(bs)
    _deposit(ch, 50_000)
    claim = bs.settlement.functions.claim
    stranger = bs.chain.new_account()
    bad = "InvalidVoucherSignature(bytes32)"
    _reverts(claim([ch.claim_row(1_000, 1_000, ch.voucher(1_000, stranger))]), ch.receiver.address, bad)
    _reverts(claim([ch.claim_row(1_000, 1_000, ch.voucher(2_000))]), ch.receiver.address, bad)  # another max
    _reverts(claim([ch.claim_row(1_000, 1_000, b"\x01" * 65)]), ch.receiver.address, bad)
    other = _channel(bs)
    _deposit(other, 50_000)
    _reverts(claim([other.claim_row(1_000, 1_000, ch.voucher(1_000))]), other.receiver.address, bad)  # another channel
    _reverts(claim([ch.claim_row(1_000, 1_000)]), stranger.address, "NotReceiver()")
    _reverts(claim([ch.claim_row(1_000, 1_000), other.claim_row(1_000, 1_000)]), ch.receiver.address, "NotReceiver()")
    # payerAuthorizer zero: the payer itself must have signed
    bare = _channel(bs, payer_authorizer=False)
    _deposit(bare, 5_000)
    _reverts(claim([bare.claim_row(1_000, 1_000, bare.voucher(1_000, stranger))]), bare.receiver.address, bad)
    _claim(bare, [bare.claim_row(1_000, 1_000)])
    assert bare.state() == (5_000, 1_000)


def test_claim_with_signature_batches_channels_on_the_sdk_authorizer_signature(bs: Deployed) -> None:
    authorizer = bs.chain.new_account()
    receiver = bs.chain.new_account()
    channels = []
    for _ in range(3):
        ch = _channel(bs)
        ch.authorizer, ch.receiver = authorizer, receiver
        _deposit(ch, 40_000)
        channels.append(ch)
    rows = [ch.claim_row(10_000 * (i + 1), 10_000 * (i + 1) - 1) for i, ch in enumerate(channels)]
    sdk_rows = [ch.sdk_claim(row) for ch, row in zip(channels, rows, strict=True)]
    signature = _b32(
        sign_claim_batch(LocalAuthorizerSigner(authorizer.unsafe_export_private_key()), sdk_rows, bs.chain.network)
    )
    fns = bs.settlement.functions
    stranger = bs.chain.new_account()
    forged = _b32(
        sign_claim_batch(LocalAuthorizerSigner(stranger.unsafe_export_private_key()), sdk_rows, bs.chain.network)
    )
    _reverts(fns.claimWithSignature(rows, forged), stranger.address, "InvalidAuthorizerSignature()")
    _reverts(fns.claimWithSignature(rows[:2], signature), stranger.address, "InvalidAuthorizerSignature()")
    _reverts(fns.claimWithSignature([], signature), stranger.address, "EmptyBatch()")
    mixed = _channel(bs)
    _deposit(mixed, 1_000)
    _reverts(
        fns.claimWithSignature([*rows, mixed.claim_row(1, 1)], signature),
        stranger.address,
        "MixedReceiverAuthorizers()",
    )
    _send(bs, stranger, fns.claimWithSignature(rows, signature))  # any relayer may submit
    assert [ch.state() for ch in channels] == [(40_000, 9_999), (40_000, 19_999), (40_000, 29_999)]
    assert bs.settlement.functions.receivers(receiver.address, bs.token.address).call() == [59_997, 0]


# ------------------------------------------------------------------ settle


def test_settle_moves_exactly_the_claimed_total_to_the_receiver(bs: Deployed) -> None:
    ch = _channel(bs)
    _deposit(ch, 70_000)
    _claim(ch, [ch.claim_row(12_345, 12_345)])
    anyone = bs.chain.new_account()
    held = bs.token.balance_of(SETTLEMENT)
    receipt = _send(bs, anyone, bs.settlement.functions.settle(ch.receiver.address, bs.token.address))
    assert bs.token.balance_of(ch.receiver.address) == 12_345
    assert bs.token.balance_of(SETTLEMENT) == held - 12_345
    assert _receiver_state(ch) == (12_345, 12_345)
    (event,) = bs.settlement.events.Settled().process_receipt(receipt, errors=DISCARD)
    assert dict(event["args"]) == {
        "receiver": ch.receiver.address,
        "token": bs.token.address,
        "sender": anyone.address,
        "amount": 12_345,
    }
    # nothing owed: a no-op without an event
    again = _send(bs, anyone, bs.settlement.functions.settle(ch.receiver.address, bs.token.address))
    assert again["logs"] == []
    assert bs.token.balance_of(ch.receiver.address) == 12_345
    _claim(ch, [ch.claim_row(20_000, 20_000)])
    _send(bs, anyone, bs.settlement.functions.settle(ch.receiver.address, bs.token.address))
    assert bs.token.balance_of(ch.receiver.address) == 20_000
    assert ch.state() == (70_000, 20_000)


# ----------------------------------------------------------------- refunds


def _refund_sig(ch: Channel, amount: int, nonce: int, signer: LocalSigner | None = None) -> bytes:
    key = (signer or ch.authorizer).unsafe_export_private_key()
    return _b32(sign_refund(LocalAuthorizerSigner(key), "0x" + ch.id.hex(), amount, nonce, ch.bs.chain.network))


def test_refund_with_signature_uses_each_nonce_once(bs: Deployed) -> None:
    ch = _channel(bs)
    _deposit(ch, 100_000)
    _claim(ch, [ch.claim_row(30_000, 30_000)])
    fns = bs.settlement.functions
    relayer = bs.chain.new_account()
    assert fns.refundNonce(ch.id).call() == 0
    _reverts(
        fns.refundWithSignature(ch.config, 10_000, 0, _refund_sig(ch, 10_000, 0, relayer)),
        relayer.address,
        "InvalidAuthorizerSignature()",
    )
    _reverts(
        fns.refundWithSignature(ch.config, 10_000, 0, _refund_sig(ch, 9_999, 0)),
        relayer.address,
        "InvalidAuthorizerSignature()",
    )
    _reverts(
        fns.refundWithSignature(ch.config, 10_000, 1, _refund_sig(ch, 10_000, 1)),
        relayer.address,
        "InvalidRefundNonce(uint256,uint256)",
    )
    first = fns.refundWithSignature(ch.config, 10_000, 0, _refund_sig(ch, 10_000, 0))
    _send(bs, relayer, first)
    assert bs.token.balance_of(ch.payer.address) == 910_000
    assert ch.state() == (90_000, 30_000)
    assert fns.refundNonce(ch.id).call() == 1
    _reverts(first, relayer.address, "InvalidRefundNonce(uint256,uint256)")  # replay refused
    # capped at the unclaimed remainder
    _send(bs, relayer, fns.refundWithSignature(ch.config, 10**30, 1, _refund_sig(ch, 10**30, 1)))
    assert ch.state() == (30_000, 30_000)
    assert bs.token.balance_of(ch.payer.address) == 970_000
    # nothing left: the nonce is still spent, nothing moves
    _send(bs, relayer, fns.refundWithSignature(ch.config, 5, 2, _refund_sig(ch, 5, 2)))
    assert fns.refundNonce(ch.id).call() == 3
    assert bs.token.balance_of(ch.payer.address) == 970_000
    _reverts(fns.refundWithSignature(ch.config, 0, 3, _refund_sig(ch, 0, 3)), relayer.address, "ZeroAmount()")
    # the receiver's claim is untouched
    _send(bs, relayer, fns.settle(ch.receiver.address, bs.token.address))
    assert bs.token.balance_of(ch.receiver.address) == 30_000


def test_refund_by_the_receiver_side(bs: Deployed) -> None:
    ch = _channel(bs)
    _deposit(ch, 8_000)
    fns = bs.settlement.functions
    _reverts(fns.refund(ch.config, 1_000), ch.payer.address, "NotReceiver()")
    _send(bs, ch.receiver, fns.refund(ch.config, 1_000))
    _send(bs, ch.authorizer, fns.refund(ch.config, 2_000))
    assert ch.state() == (5_000, 0)
    assert bs.token.balance_of(ch.payer.address) == 995_000
    assert fns.refundNonce(ch.id).call() == 2


def test_multicall_claims_and_refunds_atomically(bs: Deployed) -> None:
    ch = _channel(bs)
    _deposit(ch, 60_000)
    fns = bs.settlement.functions
    row = ch.claim_row(21_000, 21_000)
    claim_sig = _b32(
        sign_claim_batch(
            LocalAuthorizerSigner(ch.authorizer.unsafe_export_private_key()), [ch.sdk_claim(row)], bs.chain.network
        )
    )
    calls = [
        fns.claimWithSignature([row], claim_sig)._encode_transaction_data(),
        fns.refundWithSignature(ch.config, 39_000, 0, _refund_sig(ch, 39_000, 0))._encode_transaction_data(),
    ]
    _send(bs, bs.chain.new_account(), fns.multicall(calls))
    assert ch.state() == (21_000, 21_000)
    assert bs.token.balance_of(ch.payer.address) == 979_000
    assert _receiver_state(ch) == (21_000, 0)


# ------------------------------------------------------------- withdrawals


def _advance(chain: DevChain, seconds: int) -> None:
    chain.rpc("evm_increaseTime", [seconds])
    chain.rpc("evm_mine", [])


def test_withdraw_waits_for_the_delay_and_yields_to_claims(bs: Deployed, rewind: None) -> None:
    ch = _channel(bs)
    _deposit(ch, 100_000)
    _claim(ch, [ch.claim_row(10_000, 10_000)])
    fns = bs.settlement.functions
    _reverts(fns.initiateWithdraw(ch.config, 1), ch.receiver.address, "NotPayer()")
    _reverts(fns.initiateWithdraw(ch.config, 0), ch.payer.address, "ZeroAmount()")
    _reverts(fns.initiateWithdraw(ch.config, 90_001), ch.payer.address, "AmountAboveAvailable(uint128,uint128)")
    _reverts(fns.finalizeWithdraw(ch.config), ch.payer.address, "NoPendingWithdraw()")
    receipt = _send(bs, ch.payer, fns.initiateWithdraw(ch.config, 90_000))
    started = bs.chain.w3.eth.get_block(receipt["blockNumber"])["timestamp"]
    assert fns.pendingWithdrawals(ch.id).call() == [90_000, started]
    _reverts(fns.initiateWithdraw(ch.config, 1), ch.payer.address, "WithdrawPending()")
    _reverts(fns.finalizeWithdraw(ch.config), ch.payer.address, "WithdrawDelayNotElapsed(uint256)")
    # the receiver claims during the delay: the withdrawal gets only what is left
    _claim(ch, [ch.claim_row(25_000, 25_000)])
    _advance(bs.chain, DELAY - 5)
    _reverts(fns.finalizeWithdraw(ch.config), ch.payer.address, "WithdrawDelayNotElapsed(uint256)")
    _advance(bs.chain, 5)
    _reverts(fns.finalizeWithdraw(ch.config), ch.receiver.address, "NotPayer()")
    _send(bs, ch.payer, fns.finalizeWithdraw(ch.config))
    assert bs.token.balance_of(ch.payer.address) == 900_000 + 75_000
    assert ch.state() == (25_000, 25_000)
    assert fns.pendingWithdrawals(ch.id).call() == [0, 0]
    _reverts(fns.finalizeWithdraw(ch.config), ch.payer.address, "NoPendingWithdraw()")
    _send(bs, ch.payer, fns.settle(ch.receiver.address, bs.token.address))
    assert bs.token.balance_of(ch.receiver.address) == 25_000


def test_refund_shrinks_a_pending_withdrawal(bs: Deployed) -> None:
    ch = _channel(bs)
    _deposit(ch, 50_000)
    fns = bs.settlement.functions
    _send(bs, ch.payer, fns.initiateWithdraw(ch.config, 30_000))
    _send(bs, ch.receiver, fns.refund(ch.config, 10_000))
    assert fns.pendingWithdrawals(ch.id).call()[0] == 20_000
    _send(bs, ch.receiver, fns.refund(ch.config, 40_000))  # capped at the 40_000 left
    assert fns.pendingWithdrawals(ch.id).call() == [0, 0]
    assert ch.state() == (0, 0)
    assert bs.token.balance_of(ch.payer.address) == 1_000_000


# ------------------------------------------------------------------ gas


def test_gas_is_modest(bs: Deployed) -> None:
    ch = _channel(bs)
    first = _deposit(ch, 10_000)
    top_up = _deposit(ch, 10_000)
    claim = _claim(ch, [ch.claim_row(5_000, 5_000)])
    settle = _send(bs, ch.payer, bs.settlement.functions.settle(ch.receiver.address, bs.token.address))
    assert first["gasUsed"] < 150_000, first["gasUsed"]
    assert top_up["gasUsed"] < 120_000, top_up["gasUsed"]
    assert claim["gasUsed"] < 90_000, claim["gasUsed"]
    assert settle["gasUsed"] < 70_000, settle["gasUsed"]
    with pytest.raises(DevChainError):  # a reverted transaction is reported, not swallowed
        _send(bs, ch.payer, bs.settlement.functions.initiateWithdraw(ch.config, 0))


# ------------------------------------------- the SDK's facilitator and client


class _Facilitator(FacilitatorWeb3Signer):
    """The SDK's web3 facilitator signer. Its `Settled` decoder looks for ``signer.w3`` (or
    ``.web3``), which FacilitatorWeb3Signer keeps private as ``_w3``; without this alias the
    SDK reports a successful settle with ``amount == ""``."""

    @property
    def w3(self) -> Web3:
        return self._w3


def test_the_sdk_facilitator_claims_and_settles_and_the_sdk_client_reads_the_channel(bs: Deployed) -> None:
    ch = _channel(bs)
    _deposit(ch, 40_000)
    row = ch.claim_row(17_000, 16_500)
    facilitator = _Facilitator(bs.chain.new_account().unsafe_export_private_key(), bs.chain.rpc_url)
    requirements = PaymentRequirements(
        scheme="batch-settlement",
        network=bs.chain.network,
        asset=bs.token.address,
        amount="0",
        pay_to=ch.receiver.address,
        max_timeout_seconds=300,
    )
    authorizer = LocalAuthorizerSigner(ch.authorizer.unsafe_export_private_key())
    claimed = execute_claim_with_signature(
        facilitator, ClaimPayload(claims=[ch.sdk_claim(row)]), requirements, authorizer
    )
    assert claimed.success, claimed
    client = EthAccountSignerWithRPC(Account.from_key(ch.payer.unsafe_export_private_key()), bs.chain.rpc_url)
    assert read_channel_balance_and_total_claimed(client, "0x" + ch.id.hex()) == (40_000, 16_500)
    settled = execute_settle(facilitator, SettlePayload(ch.receiver.address, bs.token.address), requirements)
    assert settled.success, settled
    assert settled.amount == "16500"
    assert bs.token.balance_of(ch.receiver.address) == 16_500
