"""Batch-settlement typed data: our hand-rolled hashing agrees with the official x402 SDK and eth-account."""

from __future__ import annotations

from typing import Any

import pytest
from eth_abi.abi import encode as abi_encode
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils.crypto import keccak
from hypothesis import given, settings
from hypothesis import strategies as st
from x402.mechanisms.evm.batch_settlement import constants as sdk_constants
from x402.mechanisms.evm.batch_settlement import types as sdk_types
from x402.mechanisms.evm.batch_settlement.authorizer_signer import (
    LocalAuthorizerSigner,
    sign_claim_batch,
    sign_refund,
)
from x402.mechanisms.evm.batch_settlement.encoding import build_erc3009_deposit_nonce
from x402.mechanisms.evm.batch_settlement.utils import compute_channel_id, get_batch_settlement_eip712_domain

from wallets import (
    BATCH_SETTLEMENT_ADDRESS,
    ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
    MAX_WITHDRAW_DELAY,
    MIN_WITHDRAW_DELAY,
    ChannelConfig,
    ClaimBatch,
    ClaimEntry,
    LocalSigner,
    Refund,
    TypedDataError,
    Voucher,
    batch_settlement_domain,
    deposit_nonce,
    recover_address,
    typed_data_digest,
)

CHAIN_ID = 31337
PAYER = LocalSigner("0x" + "11" * 32)
RECEIVER_AUTH = LocalSigner("0x" + "22" * 32)


def _config(**kw: Any) -> ChannelConfig:
    fields: dict[str, Any] = {
        "payer": PAYER.address,
        "payer_authorizer": PAYER.address,
        "receiver": "0x" + "22" * 20,
        "receiver_authorizer": RECEIVER_AUTH.address,
        "token": "0x" + "44" * 20,
        "withdraw_delay": 900,
        "salt": bytes(32),
    } | kw
    return ChannelConfig(**fields)


def _sdk_config(config: ChannelConfig) -> sdk_types.ChannelConfig:
    return sdk_types.ChannelConfig.from_dict(config.to_wire())


def _eth_account_digest(domain: dict[str, Any], types: dict[str, Any], message: dict[str, Any]) -> bytes:
    signable = encode_typed_data(domain_data=domain, message_types=types, message_data=message)
    return keccak(b"\x19" + signable.version + signable.header + signable.body)


def test_constants_match_the_sdk() -> None:
    assert BATCH_SETTLEMENT_ADDRESS == sdk_constants.BATCH_SETTLEMENT_ADDRESS
    assert ERC3009_DEPOSIT_COLLECTOR_ADDRESS == sdk_constants.ERC3009_DEPOSIT_COLLECTOR_ADDRESS
    assert (MIN_WITHDRAW_DELAY, MAX_WITHDRAW_DELAY) == (
        sdk_constants.MIN_WITHDRAW_DELAY,
        sdk_constants.MAX_WITHDRAW_DELAY,
    )
    assert batch_settlement_domain(8453).to_eip712() == get_batch_settlement_eip712_domain(8453)


def test_brief_test_vector() -> None:
    config = ChannelConfig(
        payer="0x" + "11" * 20,
        payer_authorizer="0x" + "11" * 20,
        receiver="0x" + "22" * 20,
        receiver_authorizer="0x" + "33" * 20,
        token="0x" + "44" * 20,
        withdraw_delay=900,
        salt=bytes(32),
    )
    assert batch_settlement_domain(CHAIN_ID).separator.hex() == (
        "bf720f8d28a5c76a2f7743512598984fa4b90dd1efdb19af73f64cc6587d68af"
    )
    assert config.channel_id(CHAIN_ID).hex() == "c9c5c364f181fb1299a4933aeee223de83b10bb5d1e3bfa5778b015913d5a030"


address = st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex())
uint128 = st.integers(min_value=0, max_value=2**128 - 1)


@settings(max_examples=60, deadline=None)
@given(
    payer=address,
    payer_authorizer=st.one_of(address, st.just("0x" + "00" * 20)),
    receiver=address,
    receiver_authorizer=address,
    token=address,
    delay=st.integers(min_value=0, max_value=2**40 - 1),
    salt=st.binary(min_size=32, max_size=32),
    chain_id=st.integers(min_value=1, max_value=2**64),
)
def test_channel_id_matches_the_sdk(
    payer: str,
    payer_authorizer: str,
    receiver: str,
    receiver_authorizer: str,
    token: str,
    delay: int,
    salt: bytes,
    chain_id: int,
) -> None:
    config = ChannelConfig(payer, payer_authorizer, receiver, receiver_authorizer, token, delay, salt)
    assert "0x" + config.channel_id(chain_id).hex() == compute_channel_id(_sdk_config(config), chain_id)
    assert ChannelConfig.from_wire(config.to_wire()) == config
    assert config.has_payer_authorizer == (int(payer_authorizer, 16) != 0)


@settings(max_examples=30, deadline=None)
@given(salt=st.integers(min_value=0, max_value=2**256 - 1), channel_id=st.binary(min_size=32, max_size=32))
def test_deposit_nonce_matches_the_sdk(salt: int, channel_id: bytes) -> None:
    expected = build_erc3009_deposit_nonce("0x" + channel_id.hex(), hex(salt))
    assert "0x" + deposit_nonce(channel_id, salt).hex() == expected
    assert deposit_nonce(channel_id, salt) == keccak(abi_encode(["bytes32", "uint256"], [channel_id, salt]))


@settings(max_examples=30, deadline=None)
@given(max_claimable=uint128, nonce=st.integers(min_value=0, max_value=2**256 - 1), amount=uint128)
def test_voucher_and_refund_digests_match_eth_account(max_claimable: int, nonce: int, amount: int) -> None:
    domain = batch_settlement_domain(CHAIN_ID)
    channel_id = _config().channel_id(CHAIN_ID)
    voucher = Voucher(channel_id, max_claimable)
    refund = Refund(channel_id, nonce, amount)
    sdk_domain = get_batch_settlement_eip712_domain(CHAIN_ID)
    assert typed_data_digest(domain, voucher) == _eth_account_digest(
        sdk_domain, sdk_constants.VOUCHER_TYPES, voucher.to_eip712()
    )
    assert typed_data_digest(domain, refund) == _eth_account_digest(
        sdk_domain, sdk_constants.REFUND_TYPES, refund.to_eip712()
    )


def test_voucher_signed_by_us_recovers_with_eth_account_and_back() -> None:
    domain = batch_settlement_domain(CHAIN_ID)
    voucher = Voucher(_config().channel_id(CHAIN_ID), 12_345)
    ours = PAYER.sign_typed_data(domain, voucher)
    signable = encode_typed_data(
        domain_data=get_batch_settlement_eip712_domain(CHAIN_ID),
        message_types=sdk_constants.VOUCHER_TYPES,
        message_data=voucher.to_eip712(),
    )
    assert Account.recover_message(signable, signature=ours) == PAYER.address
    theirs = bytes(Account.sign_message(signable, "0x" + "11" * 32).signature)
    assert recover_address(typed_data_digest(domain, voucher), theirs) == PAYER.address


def test_refund_signed_by_the_sdk_recovers_with_us_and_back() -> None:
    domain = batch_settlement_domain(CHAIN_ID)
    channel_id = _config().channel_id(CHAIN_ID)
    refund = Refund(channel_id, 3, 5_000)
    sdk_signer = LocalAuthorizerSigner("0x" + "22" * 32)
    sdk_sig = bytes.fromhex(sign_refund(sdk_signer, "0x" + channel_id.hex(), 5_000, 3, "eip155:31337")[2:])
    assert recover_address(typed_data_digest(domain, refund), sdk_sig) == RECEIVER_AUTH.address
    assert RECEIVER_AUTH.sign_typed_data(domain, refund) == sdk_sig  # RFC 6979: deterministic


def test_claim_batch_matches_the_sdk_signature() -> None:
    domain = batch_settlement_domain(CHAIN_ID)
    configs = [_config(salt=bytes([i]) * 32) for i in range(3)]
    rows = [(c, 1_000 * (i + 1), 500 * (i + 1)) for i, c in enumerate(configs)]
    batch = ClaimBatch(tuple(ClaimEntry(c.channel_id(CHAIN_ID), m, t) for c, m, t in rows))
    sdk_claims = [sdk_types.VoucherClaim(_sdk_config(c), str(m), "0x", str(t)) for c, m, t in rows]
    sdk_sig = sign_claim_batch(LocalAuthorizerSigner("0x" + "22" * 32), sdk_claims, "eip155:31337")
    ours = RECEIVER_AUTH.sign_typed_data(domain, batch)
    assert "0x" + ours.hex() == sdk_sig
    assert recover_address(typed_data_digest(domain, batch), bytes.fromhex(sdk_sig[2:])) == RECEIVER_AUTH.address
    full = {
        "types": {"EIP712Domain": _DOMAIN_TYPES} | ClaimBatch.eip712_types(),
        "primaryType": "ClaimBatch",
        "domain": domain.to_eip712(),
        "message": batch.to_eip712(),
    }
    assert Account.recover_message(encode_typed_data(full_message=full), signature=ours) == RECEIVER_AUTH.address


def test_empty_claim_batch_hashes_like_eth_account() -> None:
    domain = batch_settlement_domain(CHAIN_ID)
    assert typed_data_digest(domain, ClaimBatch(())) == _eth_account_digest(
        get_batch_settlement_eip712_domain(CHAIN_ID), sdk_constants.CLAIM_BATCH_TYPES, {"claims": []}
    )


_DOMAIN_TYPES = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]


def test_wire_form_is_what_the_sdk_sends() -> None:
    config = _config(salt=b"\xab" * 32, withdraw_delay=3600)
    wire = config.to_wire()
    assert wire == _sdk_config(config).to_dict()
    assert wire["withdrawDelay"] == 3600 and isinstance(wire["withdrawDelay"], int)
    assert wire["salt"] == "0x" + "ab" * 32
    # lowercase addresses are accepted and stored checksummed
    lower = wire | {"payer": wire["payer"].lower(), "extra": "ignored"}
    assert ChannelConfig.from_wire(lower) == config


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"payer": None}, "channelConfig.payer"),
        ({"payerAuthorizer": "0x1234"}, "channelConfig.payerAuthorizer"),
        ({"receiver": 7}, "channelConfig.receiver"),
        ({"receiverAuthorizer": "0x" + "zz" * 20}, "channelConfig.receiverAuthorizer"),
        ({"token": "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913".replace("fCD", "fcD")}, "channelConfig.token"),
        ({"withdrawDelay": "900"}, "channelConfig.withdrawDelay"),
        ({"withdrawDelay": True}, "channelConfig.withdrawDelay"),
        ({"withdrawDelay": -1}, "channelConfig.withdrawDelay"),
        ({"withdrawDelay": 2**40}, "channelConfig.withdrawDelay"),
        ({"withdrawDelay": 900.0}, "channelConfig.withdrawDelay"),
        ({"salt": "0x" + "00" * 31}, "channelConfig.salt"),
        ({"salt": "00" * 32}, "channelConfig.salt"),
        ({"salt": "0x" + "g0" * 32}, "channelConfig.salt"),
        ({"salt": 0}, "channelConfig.salt"),
    ],
)
def test_bad_wire_input_is_rejected_naming_the_field(change: dict[str, Any], field: str) -> None:
    wire = _config().to_wire() | change
    with pytest.raises(TypedDataError, match=field.replace(".", r"\.")):
        ChannelConfig.from_wire(wire)


def test_missing_field_and_non_object_are_rejected() -> None:
    wire = _config().to_wire()
    del wire["salt"]
    with pytest.raises(TypedDataError, match="channelConfig.salt"):
        ChannelConfig.from_wire(wire)
    with pytest.raises(TypedDataError, match="channelConfig must be an object"):
        ChannelConfig.from_wire([1, 2])


def test_constructors_check_ranges() -> None:
    cid = bytes(32)
    with pytest.raises(TypedDataError, match="maxClaimableAmount"):
        Voucher(cid, 2**128)
    with pytest.raises(TypedDataError, match="maxClaimableAmount"):
        Voucher(cid, True)
    with pytest.raises(TypedDataError, match="channelId"):
        Voucher(b"\x00" * 31, 1)
    with pytest.raises(TypedDataError, match="amount"):
        Refund(cid, 0, -1)
    with pytest.raises(TypedDataError, match="nonce"):
        Refund(cid, 2**256, 1)
    with pytest.raises(TypedDataError, match="totalClaimed"):
        ClaimEntry(cid, 1, 2**128)
    with pytest.raises(TypedDataError, match="ClaimEntry"):
        ClaimBatch([ClaimEntry(cid, 1, 1)])  # type: ignore[arg-type]
    with pytest.raises(TypedDataError, match="salt"):
        _config(salt=b"\x00" * 16)
    with pytest.raises(TypedDataError, match="withdrawDelay"):
        _config(withdraw_delay=2**40)
    with pytest.raises(TypedDataError, match="salt"):
        deposit_nonce(cid, -1)
