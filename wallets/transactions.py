"""EIP-1559 (type 2) transactions: encoding and fast signing.

eth-account's ``sign_transaction`` validates and normalises a dict through several layers
(~0.7 ms); settlement signs one transaction per paid call, so the fixed shape it needs is
encoded here directly with RLP and signed with libsecp256k1 (~0.1 ms). Tests pin the output
to eth-account's, byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass

import rlp
from eth_utils.crypto import keccak

from wallets.eip712 import checksum, uint256
from wallets.errors import TypedDataError

__all__ = ["Eip1559Transaction"]


@dataclass(frozen=True, slots=True)
class Eip1559Transaction:
    """A type-2 transaction with an empty access list.

    Raises:
        TypedDataError: a field is out of range, or ``to`` is not an address.
    """

    chain_id: int
    nonce: int
    max_priority_fee_per_gas: int
    max_fee_per_gas: int
    gas: int
    to: str
    value: int
    data: bytes

    def __post_init__(self) -> None:
        for name in ("chain_id", "nonce", "max_priority_fee_per_gas", "max_fee_per_gas", "gas", "value"):
            uint256(getattr(self, name), name)
        object.__setattr__(self, "to", checksum(self.to, "to"))
        if not isinstance(self.data, bytes):
            raise TypedDataError("data must be bytes")

    def _fields(self) -> list[object]:
        return [
            self.chain_id,
            self.nonce,
            self.max_priority_fee_per_gas,
            self.max_fee_per_gas,
            self.gas,
            bytes.fromhex(self.to[2:]),
            self.value,
            self.data,
            [],
        ]

    def signing_hash(self) -> bytes:
        """``keccak256(0x02 || rlp(fields))``: the digest the sender signs."""
        encoded: bytes = rlp.encode(self._fields())
        return keccak(b"\x02" + encoded)

    def encode_signed(self, signature: bytes) -> bytes:
        """The raw transaction for ``eth_sendRawTransaction`` from a 65-byte ``r || s || v`` signature."""
        if len(signature) != 65:
            raise TypedDataError("signature must be 65 bytes")
        y_parity = signature[64] - 27 if signature[64] >= 27 else signature[64]
        r = int.from_bytes(signature[:32], "big")
        s = int.from_bytes(signature[32:64], "big")
        encoded: bytes = rlp.encode([*self._fields(), y_parity, r, s])
        return b"\x02" + encoded
