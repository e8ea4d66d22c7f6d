"""Errors raised by `wallets`.

Hierarchy::

    WalletError (ValueError)
      InvalidKeyError      a private key that is not a valid secp256k1 scalar
      KeystoreError        a keystore that cannot be read, parsed or decrypted
      SignatureError       a signature that is malformed or does not recover
      TypedDataError       EIP-712 / EIP-3009 fields out of range or of the wrong shape

Messages never contain key material or passwords.
"""

from __future__ import annotations

__all__ = ["InvalidKeyError", "KeystoreError", "SignatureError", "TypedDataError", "WalletError"]


class WalletError(ValueError):
    """Base class of every error raised by `wallets`."""


class InvalidKeyError(WalletError):
    """A private key is not 32 bytes or is outside the secp256k1 range."""


class KeystoreError(WalletError):
    """A keystore file could not be read, parsed, or decrypted."""


class SignatureError(WalletError):
    """A signature is malformed, non-canonical, or does not recover to a key."""


class TypedDataError(WalletError):
    """Typed-data fields are missing, of the wrong type, or out of range."""
