"""EIP-3009 typed data: our hand-rolled hashing agrees with eth-account, and recovery is strict."""

from __future__ import annotations

import time

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from hypothesis import given, settings
from hypothesis import strategies as st

from wallets import (
    CancelAuthorization,
    Eip712Domain,
    LocalSigner,
    ReceiveWithAuthorization,
    SignatureError,
    TransferWithAuthorization,
    TypedDataError,
    full_message,
    new_nonce,
    recover_address,
    recover_authorizer,
    sign_authorization,
    typed_data_digest,
)
from wallets.recover import SECP256K1_N

PAYER = LocalSigner("0x" + "11" * 32)
PAY_TO = "0x90F79bf6EB2c4f870365E785982E1f101E93b906"
DOMAIN = Eip712Domain("USD Coin", "2", 8453, "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913")


def _auth(**kw: object) -> TransferWithAuthorization:
    fields: dict[str, object] = {
        "from_": PAYER.address,
        "to": PAY_TO,
        "value": 10_000,
        "valid_after": 0,
        "valid_before": 1_900_000_000,
        "nonce": b"\x07" * 32,
    } | kw
    return TransferWithAuthorization(**fields)  # type: ignore[arg-type]


def test_type_hashes_match_the_specification() -> None:
    assert TransferWithAuthorization.typehash().hex() == (
        "7c7c6cdb67a18743f49ec6fa9b35f50d52ed05cbed4cc592e13b44501c1a2267"
    )
    assert ReceiveWithAuthorization.typehash().hex() == (
        "d099cc98ef71107a616c4f0f941f04c322d8e254fe26b3c6668db87aae413de8"
    )


uint = st.integers(min_value=0, max_value=2**256 - 1)


@settings(max_examples=60, deadline=None)
@given(
    value=uint,
    after=uint,
    before=uint,
    nonce=st.binary(min_size=32, max_size=32),
    chain_id=st.integers(min_value=1, max_value=2**64),
    name=st.text(max_size=20),
)
def test_digest_equals_eth_account(value: int, after: int, before: int, nonce: bytes, chain_id: int, name: str) -> None:
    domain = Eip712Domain(name, "2", chain_id, DOMAIN.verifying_contract)
    auth = _auth(value=value, valid_after=after, valid_before=before, nonce=nonce)
    assert typed_data_digest(domain, auth) == _eth_account_digest(domain, auth)


def _eth_account_digest(domain: Eip712Domain, message: object) -> bytes:
    from eth_utils.crypto import keccak

    signable = encode_typed_data(full_message=full_message(domain, message))  # type: ignore[arg-type]
    return keccak(b"\x19" + signable.version + signable.header + signable.body)


def test_signature_recovers_with_eth_account_too() -> None:
    auth = _auth(nonce=new_nonce())
    signature = sign_authorization(PAYER, DOMAIN, auth)
    assert recover_authorizer(DOMAIN, auth, signature) == PAYER.address
    signable = encode_typed_data(full_message=full_message(DOMAIN, auth))
    assert Account.recover_message(signable, signature=signature) == PAYER.address
    # and the other way round: eth-account's signature verifies with ours
    theirs = Account.sign_message(signable, "0x" + "11" * 32).signature
    assert recover_authorizer(DOMAIN, auth, bytes(theirs)) == PAYER.address


@pytest.mark.parametrize(
    "change",
    [
        {"value": 10_001},
        {"to": PAYER.address},
        {"valid_before": 1_900_000_001},
        {"valid_after": 1},
        {"nonce": b"\x08" * 32},
    ],
)
def test_any_changed_field_recovers_someone_else(change: dict[str, object]) -> None:
    signature = sign_authorization(PAYER, DOMAIN, _auth())
    assert recover_authorizer(DOMAIN, _auth(**change), signature) != PAYER.address


def test_other_chain_or_token_recovers_someone_else() -> None:
    auth = _auth()
    signature = sign_authorization(PAYER, DOMAIN, auth)
    for domain in (
        Eip712Domain("USD Coin", "2", 84532, DOMAIN.verifying_contract),
        Eip712Domain("USD Coin", "2", 8453, PAY_TO),
        Eip712Domain("USDC", "2", 8453, DOMAIN.verifying_contract),
    ):
        assert recover_authorizer(domain, auth, signature) != PAYER.address


def test_v_as_0_or_1_is_accepted() -> None:
    auth = _auth()
    signature = sign_authorization(PAYER, DOMAIN, auth)
    zero_based = signature[:64] + bytes([signature[64] - 27])
    assert recover_authorizer(DOMAIN, auth, zero_based) == PAYER.address


def test_malformed_signatures_are_refused() -> None:
    auth = _auth()
    signature = sign_authorization(PAYER, DOMAIN, auth)
    s = int.from_bytes(signature[32:64], "big")
    high_s = signature[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - signature[64]])
    for bad in (signature[:64], signature + b"\x00", signature[:64] + b"\x1d", bytes(65), high_s):
        with pytest.raises(SignatureError):
            recover_authorizer(DOMAIN, auth, bad)
    with pytest.raises(SignatureError):
        recover_address(b"\x00" * 31, signature)


def test_signing_for_someone_else_is_refused() -> None:
    other = LocalSigner.generate()
    with pytest.raises(TypedDataError, match="does not match the authorizer"):
        sign_authorization(other, DOMAIN, _auth())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("value", -1),
        ("value", 2**256),
        ("value", True),
        ("valid_before", "300"),
        ("nonce", b"\x00" * 31),
        ("to", "0x1234"),
        ("from_", "not an address"),
    ],
)
def test_out_of_range_fields_are_refused(field: str, value: object) -> None:
    with pytest.raises(TypedDataError):
        _auth(**{field: value})


def test_wire_round_trip_and_strict_parsing() -> None:
    auth = _auth(nonce=new_nonce())
    wire = auth.to_wire()
    assert all(isinstance(v, str) for v in wire.values())
    assert TransferWithAuthorization.from_wire(wire) == auth
    lower = dict(wire, to=wire["to"].lower())
    assert TransferWithAuthorization.from_wire(lower).to == PAY_TO
    for key, bad in [
        ("value", 10_000),
        ("value", "1e4"),
        ("value", "-5"),
        ("validBefore", "0x10"),
        ("nonce", "0x1234"),
        ("nonce", "0x" + "zz" * 32),
        ("from", None),
    ]:
        with pytest.raises(TypedDataError):
            TransferWithAuthorization.from_wire(dict(wire, **{key: bad}))
    with pytest.raises(TypedDataError):
        TransferWithAuthorization.from_wire([wire])


def test_cancel_authorization_digest_equals_eth_account() -> None:
    cancel = CancelAuthorization(PAYER.address, new_nonce())
    assert typed_data_digest(DOMAIN, cancel) == _eth_account_digest(DOMAIN, cancel)


def test_nonces_are_random() -> None:
    assert len({new_nonce() for _ in range(100)}) == 100


def test_expired_is_not_a_wallet_concern() -> None:
    # Validity windows are checked by the token and the payment gate, not when signing.
    auth = _auth(valid_before=int(time.time()) - 1)
    assert recover_authorizer(DOMAIN, auth, sign_authorization(PAYER, DOMAIN, auth)) == PAYER.address
