"""Signature recovery on the fast path: coincurve (libsecp256k1) directly.

eth-account's pure-Python fallback takes ~7 ms per recovery; libsecp256k1 takes ~60 µs.
Verification of every paid request goes through here, so it never touches the fallback.
"""

from __future__ import annotations

from coincurve import PublicKey
from eth_typing import ChecksumAddress
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from wallets.errors import SignatureError

__all__ = [
    "ecc_backend_name",
    "normalize_signature",
    "public_key_to_address",
    "recover_address",
    "recover_address_bytes",
]

# secp256k1 group order; signatures with s above half of it are the malleable twin
# of a canonical one and are refused by OpenZeppelin's ECDSA (and so by the token).
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_HALF_N = SECP256K1_N // 2


def normalize_signature(signature: bytes) -> bytes:
    """Check a 65-byte ``r || s || v`` signature and return it with ``v`` in {27, 28}.

    Accepts ``v`` as 0/1 or 27/28 (wallets differ). Rejects zero or out-of-range ``r``/``s``
    and high-``s`` (malleable) signatures, matching what the EIP-3009 token accepts.

    Raises:
        SignatureError: wrong length, bad ``v``, or non-canonical ``r``/``s``.
    """
    if len(signature) != 65:
        raise SignatureError(f"signature must be 65 bytes, got {len(signature)}")
    v = signature[64]
    if v in (0, 1):
        v += 27
    if v not in (27, 28):
        raise SignatureError(f"signature v must be 0, 1, 27 or 28, got {signature[64]}")
    r = int.from_bytes(signature[0:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    if not 0 < r < SECP256K1_N or not 0 < s <= _HALF_N:
        raise SignatureError("signature r or s is zero, out of range, or not canonical (high s)")
    return signature[:64] + bytes([v])


def public_key_to_address(public_key: PublicKey) -> ChecksumAddress:
    """Return the Ethereum address of a secp256k1 public key."""
    return to_checksum_address(keccak(public_key.format(compressed=False)[1:])[-20:])


def recover_address(digest: bytes, signature: bytes) -> ChecksumAddress:
    """Recover the address that signed a 32-byte digest.

    Args:
        digest: the exact 32 bytes that were signed (for EIP-712, the ``0x1901`` digest).
        signature: 65 bytes ``r || s || v``; ``v`` may be 0/1 or 27/28.

    Returns:
        The checksummed signer address.

    Raises:
        SignatureError: the digest is not 32 bytes, or the signature is malformed or
            does not recover to a point.
    """
    return to_checksum_address(recover_address_bytes(digest, signature))


def recover_address_bytes(digest: bytes, signature: bytes) -> bytes:
    """`recover_address` as the 20 raw bytes: for comparing with a known address, which
    skips the EIP-55 checksum (a keccak and ~40 us of Python per call on the paid path).

    Raises:
        SignatureError: as `recover_address`.
    """
    if len(digest) != 32:
        raise SignatureError(f"digest must be 32 bytes, got {len(digest)}")
    sig = normalize_signature(signature)
    try:
        public_key = PublicKey.from_signature_and_message(sig[:64] + bytes([sig[64] - 27]), digest, hasher=None)
    except Exception as exc:  # coincurve raises bare Exception/ValueError on unrecoverable input
        raise SignatureError("signature does not recover to a public key") from exc
    return keccak(public_key.format(compressed=False)[1:])[-20:]


def ecc_backend_name() -> str:
    """Name of the ECC backend eth-keys (and so eth-account) uses: should be ``CoinCurveECCBackend``."""
    from eth_keys.backends import get_backend

    return type(get_backend()).__name__
