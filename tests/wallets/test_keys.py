"""Keys: generation, keystores, and that key material never leaks."""

from __future__ import annotations

import json
import logging
import pickle
import stat
from pathlib import Path

import pytest
from eth_account import Account

from wallets import (
    Eip1559Transaction,
    InvalidKeyError,
    KeystoreError,
    LocalSigner,
    Signer,
    TransactionSigner,
    ecc_backend_name,
    load_keystore,
    save_keystore,
)

KEY = "0x4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
FAST_SCRYPT = 2**10  # keystore tests use a cheap KDF; the default (2**18) is for real keys


def test_address_matches_eth_account() -> None:
    assert LocalSigner(KEY).address == Account.from_key(KEY).address
    assert LocalSigner(bytes.fromhex(KEY[2:])).address == Account.from_key(KEY).address
    assert LocalSigner(KEY[2:]).address == Account.from_key(KEY).address


def test_generated_keys_differ_and_satisfy_the_protocols() -> None:
    a, b = LocalSigner.generate(), LocalSigner.generate()
    assert a.address != b.address
    assert isinstance(a, Signer) and isinstance(a, TransactionSigner)


def test_key_never_in_repr_str_or_pickle(caplog: pytest.LogCaptureFixture) -> None:
    signer = LocalSigner(KEY)
    secret = KEY[2:]
    logging.getLogger("test").warning("signer %s %r", signer, signer)
    for text in (repr(signer), str(signer), caplog.text, f"{signer}"):
        assert secret not in text.lower()
    assert signer.address in repr(signer)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(signer)


@pytest.mark.parametrize("bad", ["0x1234", "zz" * 32, "00" * 32, "ff" * 32, b"\x01" * 31, 12345])
def test_invalid_keys_are_refused_without_echo(bad: object) -> None:
    with pytest.raises(InvalidKeyError) as info:
        LocalSigner(bad)  # type: ignore[arg-type]
    text = str(info.value) + repr(info.value)
    if isinstance(bad, str) and len(bad) > 8:
        assert bad not in text
    assert info.value.__cause__ is None
    assert info.value.__context__ is None or info.value.__suppress_context__


def test_keystore_round_trip(tmp_path: Path) -> None:
    signer = LocalSigner(KEY)
    path = save_keystore(signer, tmp_path / "operator.json", "correct horse", scrypt_n=FAST_SCRYPT)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = json.loads(path.read_text())
    assert data["version"] == 3 and data["crypto"]["kdf"] == "scrypt"
    assert KEY[2:] not in path.read_text()
    assert load_keystore(path, "correct horse") == signer
    # the standard format: eth-account reads what we write
    assert "0x" + Account.decrypt(data, "correct horse").hex() == KEY


def test_keystore_never_overwritten(tmp_path: Path) -> None:
    path = save_keystore(LocalSigner(KEY), tmp_path / "k.json", "pw", scrypt_n=FAST_SCRYPT)
    before = path.read_text()
    with pytest.raises(KeystoreError, match="refusing to overwrite"):
        save_keystore(LocalSigner.generate(), path, "pw", scrypt_n=FAST_SCRYPT)
    assert path.read_text() == before


def test_keystore_errors_are_clear_and_secret_free(tmp_path: Path) -> None:
    path = save_keystore(LocalSigner(KEY), tmp_path / "k.json", "right password", scrypt_n=FAST_SCRYPT)
    with pytest.raises(KeystoreError, match="wrong password") as info:
        load_keystore(path, "wrong password")
    assert "right password" not in str(info.value) and KEY[2:] not in str(info.value)
    with pytest.raises(KeystoreError, match="cannot read"):
        load_keystore(tmp_path / "missing.json", "pw")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(KeystoreError, match="not valid JSON"):
        load_keystore(tmp_path / "junk.json", "pw")
    (tmp_path / "other.json").write_text('{"hello": 1}')
    with pytest.raises(KeystoreError, match="not an Ethereum keystore"):
        load_keystore(tmp_path / "other.json", "pw")


def test_transaction_signing_matches_eth_account() -> None:
    tx = {
        "chainId": 31337,
        "nonce": 0,
        "gas": 21_000,
        "maxFeePerGas": 2 * 10**9,
        "maxPriorityFeePerGas": 10**9,
        "to": "0x90F79bf6EB2c4f870365E785982E1f101E93b906",
        "value": 1,
    }
    assert LocalSigner(KEY).sign_transaction(tx) == bytes(Account.sign_transaction(tx, KEY).raw_transaction)


def test_unsafe_sign_digest_checks_length() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        LocalSigner(KEY).unsafe_sign_digest(b"short")


def test_coincurve_backend_is_active() -> None:
    # Without coincurve, eth-account falls back to pure Python: ~30x slower verification.
    assert ecc_backend_name() == "CoinCurveECCBackend"


def test_fast_eip1559_signing_matches_eth_account() -> None:
    signer = LocalSigner(KEY)
    for data, value, nonce in ((b"", 0, 0), (bytes(range(200)), 10**18, 7), (b"\x01", 1, 2**40)):
        tx = Eip1559Transaction(
            chain_id=8453,
            nonce=nonce,
            max_priority_fee_per_gas=10**9,
            max_fee_per_gas=3 * 10**9,
            gas=200_000,
            to="0x833589fcd6edb6e08f4c7c32d4f71b54bda02913",
            value=value,
            data=data,
        )
        reference = Account.sign_transaction(
            {
                "type": 2,
                "chainId": tx.chain_id,
                "nonce": tx.nonce,
                "maxPriorityFeePerGas": tx.max_priority_fee_per_gas,
                "maxFeePerGas": tx.max_fee_per_gas,
                "gas": tx.gas,
                "to": tx.to,
                "value": tx.value,
                "data": tx.data,
                "accessList": [],
            },
            KEY,
        )
        assert signer.sign_eip1559(tx) == bytes(reference.raw_transaction)
        assert Account.recover_transaction(signer.sign_eip1559(tx)) == signer.address
