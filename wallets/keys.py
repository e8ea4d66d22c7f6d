"""Private keys held in process memory: generation, `LocalSigner`, keystore files.

A `LocalSigner` never shows its key: not in ``repr``, ``str``, exceptions, or pickles.
The only way out is `LocalSigner.unsafe_export_private_key`, named to be found in review.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from coincurve import PrivateKey
from eth_account import Account
from eth_typing import ChecksumAddress

from wallets.eip712 import typed_data_digest
from wallets.errors import InvalidKeyError, KeystoreError
from wallets.recover import SECP256K1_N, public_key_to_address
from wallets.transactions import Eip1559Transaction

if TYPE_CHECKING:
    from wallets.eip712 import Eip712Domain, Eip712Struct

__all__ = ["LocalSigner", "load_keystore", "save_keystore"]

# eth-account's default scrypt cost (n = 2**18) takes about a second and 256 MiB per
# unlock; that is the point for keys at rest, so it stays the default here.
DEFAULT_SCRYPT_N = 2**18


def _parse_private_key(key: bytes | str) -> bytes:
    if isinstance(key, str):
        text = key[2:] if key[:2] in ("0x", "0X") else key
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise InvalidKeyError("private key must be 32 bytes of hex") from None
    elif isinstance(key, bytes | bytearray):
        raw = bytes(key)
    else:
        raise InvalidKeyError("private key must be bytes or a hex string")
    if len(raw) != 32 or not 0 < int.from_bytes(raw, "big") < SECP256K1_N:
        raise InvalidKeyError("private key must be 32 bytes in the secp256k1 range")
    return raw


class LocalSigner:
    """A secp256k1 key in process memory that signs typed data and transactions.

    Implements `wallets.Signer` and `wallets.TransactionSigner`.

    Args:
        private_key: 32 raw bytes, or 64 hex digits with or without ``0x``.

    Raises:
        InvalidKeyError: the key is malformed or out of range (the message never echoes it).
    """

    __slots__ = ("_address", "_key")

    def __init__(self, private_key: bytes | str) -> None:
        self._key = PrivateKey(_parse_private_key(private_key))
        self._address = public_key_to_address(self._key.public_key)

    @classmethod
    def generate(cls) -> LocalSigner:
        """A new key from the OS CSPRNG."""
        return cls(PrivateKey().secret)

    @property
    def address(self) -> ChecksumAddress:
        """The checksummed address of the key."""
        return self._address

    def sign_typed_data(self, domain: Eip712Domain, message: Eip712Struct) -> bytes:
        """Sign EIP-712 typed data; return 65 bytes ``r || s || v`` with v in {27, 28}."""
        return self.unsafe_sign_digest(typed_data_digest(domain, message))

    def unsafe_sign_digest(self, digest: bytes) -> bytes:
        """Sign a raw 32-byte digest.

        WARNING: never sign a digest you did not compute yourself from data you checked:
        a digest can be a transaction or a transfer authorization of anything you own.

        Raises:
            ValueError: the digest is not 32 bytes.
        """
        if len(digest) != 32:
            raise ValueError("digest must be 32 bytes")
        sig = self._key.sign_recoverable(digest, hasher=None)
        return sig[:64] + bytes([sig[64] + 27])

    def sign_transaction(self, transaction: dict[str, Any]) -> bytes:
        """Sign an EVM transaction dict (web3 field names); return the raw signed transaction."""
        signed = Account.sign_transaction(transaction, self._key.secret)
        return bytes(signed.raw_transaction)

    def sign_eip1559(self, transaction: Eip1559Transaction) -> bytes:
        """Sign a type-2 transaction (the fast path for settlement); return the raw bytes."""
        return transaction.encode_signed(self.unsafe_sign_digest(transaction.signing_hash()))

    def to_keystore(self, password: str, *, scrypt_n: int = DEFAULT_SCRYPT_N) -> dict[str, Any]:
        """Encrypt the key as a standard Ethereum (Web3 Secret Storage v3) keystore dict."""
        return dict(Account.encrypt(self._key.secret, password, kdf="scrypt", iterations=scrypt_n))

    def unsafe_export_private_key(self) -> str:
        """Return the key as ``0x`` + 64 hex digits.

        WARNING: for handing keys to a local sandbox's agents only. Anyone who sees the
        result controls the account.
        """
        return "0x" + self._key.secret.hex()

    def __repr__(self) -> str:
        return f"LocalSigner(address={self._address!r})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("LocalSigner cannot be pickled: it would write the private key out")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LocalSigner) and other._address == self._address

    def __hash__(self) -> int:
        return hash(self._address)


def save_keystore(
    signer: LocalSigner, path: str | os.PathLike[str], password: str, *, scrypt_n: int = DEFAULT_SCRYPT_N
) -> Path:
    """Write ``signer``'s key to ``path`` as an encrypted keystore, mode 0600, atomically.

    Raises:
        KeystoreError: ``path`` exists already (keys are never overwritten).
    """
    target = Path(path)
    if target.exists():
        raise KeystoreError(f"refusing to overwrite existing keystore {target}")
    text = json.dumps(signer.to_keystore(password, scrypt_n=scrypt_n))
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".keystore-")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def load_keystore(path: str | os.PathLike[str], password: str) -> LocalSigner:
    """Decrypt a keystore file into a `LocalSigner`.

    Raises:
        KeystoreError: the file is missing or not keystore JSON, or the password is wrong.
    """
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise KeystoreError(f"cannot read keystore {path}: {exc.strerror}") from None
    except ValueError:
        raise KeystoreError(f"keystore {path} is not valid JSON") from None
    if not isinstance(data, dict) or "crypto" not in data and "Crypto" not in data:
        raise KeystoreError(f"keystore {path} is not an Ethereum keystore (no crypto section)")
    try:
        secret = Account.decrypt(data, password)
    except ValueError:
        raise KeystoreError(f"cannot decrypt keystore {path}: wrong password or corrupted file") from None
    except (KeyError, TypeError):
        raise KeystoreError(f"keystore {path} is missing fields or has the wrong types") from None
    return LocalSigner(bytes(secret))
