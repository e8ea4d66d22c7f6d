"""The `Signer` protocol: what payrouter needs from any key holder."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from eth_typing import ChecksumAddress

if TYPE_CHECKING:
    from wallets.eip712 import Eip712Domain, Eip712Struct
    from wallets.transactions import Eip1559Transaction

__all__ = ["Signer", "TransactionSigner"]


@runtime_checkable
class Signer(Protocol):
    """Holds one secp256k1 key and signs EIP-712 typed data with it.

    Implementations: `wallets.LocalSigner` (key in process memory); a KMS or hardware
    signer can implement the same two members with `wallets.full_message` as its input.
    """

    @property
    def address(self) -> ChecksumAddress:
        """The checksummed address of the key."""
        ...

    def sign_typed_data(self, domain: Eip712Domain, message: Eip712Struct) -> bytes:
        """Sign ``message`` under ``domain``; return 65 bytes ``r || s || v`` with v in {27, 28}."""
        ...


@runtime_checkable
class TransactionSigner(Signer, Protocol):
    """A `Signer` that can also sign raw EVM transactions (the operator's gas wallet)."""

    def sign_transaction(self, transaction: dict[str, Any]) -> bytes:
        """Sign a transaction dict (web3 field names) and return the raw signed bytes."""
        ...

    def sign_eip1559(self, transaction: Eip1559Transaction) -> bytes:
        """Sign a type-2 transaction and return the raw signed bytes."""
        ...
