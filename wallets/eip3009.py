"""EIP-3009 typed data: build, sign, recover and (de)serialise authorizations.

The wire form is the one x402's ``exact`` EVM scheme carries in ``payload.authorization``:
every value a string, integers in decimal, the nonce ``0x`` + 64 hex digits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar

from eth_typing import ChecksumAddress
from eth_utils.crypto import keccak

from wallets.eip712 import (
    Eip712Domain,
    checksum,
    typed_data_digest,
    uint256,
    word_address,
    word_uint,
)
from wallets.errors import TypedDataError
from wallets.recover import recover_address
from wallets.signer import Signer

__all__ = [
    "CancelAuthorization",
    "ReceiveWithAuthorization",
    "TransferWithAuthorization",
    "new_nonce",
    "recover_authorizer",
    "sign_authorization",
]

_AUTH_FIELDS = [
    {"name": "from", "type": "address"},
    {"name": "to", "type": "address"},
    {"name": "value", "type": "uint256"},
    {"name": "validAfter", "type": "uint256"},
    {"name": "validBefore", "type": "uint256"},
    {"name": "nonce", "type": "bytes32"},
]


def new_nonce() -> bytes:
    """32 random bytes from the OS CSPRNG, as EIP-3009 nonces must be unpredictable."""
    return os.urandom(32)


def _nonce(value: bytes) -> bytes:
    if not isinstance(value, bytes) or len(value) != 32:
        raise TypedDataError("nonce must be exactly 32 bytes")
    return value


def _wire_int(wire: dict[str, Any], key: str) -> int:
    raw = wire.get(key)
    if isinstance(raw, str) and raw.isdigit() and len(raw) <= 78:
        return int(raw)
    raise TypedDataError(f"authorization.{key} must be a decimal integer string")


def _wire_nonce(raw: Any) -> bytes:
    if isinstance(raw, str) and len(raw) == 66 and raw[:2] in ("0x", "0X"):
        try:
            return bytes.fromhex(raw[2:])
        except ValueError:
            pass
    raise TypedDataError("authorization.nonce must be 0x followed by 64 hex digits")


@dataclass(frozen=True, slots=True)
class TransferWithAuthorization:
    """An EIP-3009 ``TransferWithAuthorization`` message.

    The token moves ``value`` atomic units from ``from_`` to ``to`` when anyone submits this
    message with the signature of ``from_``, strictly after ``valid_after`` and strictly
    before ``valid_before`` (unix seconds), once per ``(from_, nonce)``.

    Raises:
        TypedDataError: on construction, if any field is out of range or malformed.
    """

    PRIMARY_TYPE: ClassVar[str] = "TransferWithAuthorization"
    TYPES: ClassVar[list[dict[str, str]]] = _AUTH_FIELDS

    from_: str
    to: str
    value: int
    valid_after: int
    valid_before: int
    nonce: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "from_", checksum(self.from_, "from"))
        object.__setattr__(self, "to", checksum(self.to, "to"))
        uint256(self.value, "value")
        uint256(self.valid_after, "validAfter")
        uint256(self.valid_before, "validBefore")
        _nonce(self.nonce)

    @classmethod
    def typehash(cls) -> bytes:
        """keccak256 of the EIP-712 type string."""
        return _typehash(cls.PRIMARY_TYPE)

    def struct_hash(self) -> bytes:
        """``hashStruct(message)`` per EIP-712."""
        return keccak(
            self.typehash()
            + word_address(self.from_)
            + word_address(self.to)
            + word_uint(self.value)
            + word_uint(self.valid_after)
            + word_uint(self.valid_before)
            + self.nonce
        )

    def to_eip712(self) -> dict[str, Any]:
        """Message values for EIP-712 JSON signers (``nonce`` as bytes)."""
        return {
            "from": self.from_,
            "to": self.to,
            "value": self.value,
            "validAfter": self.valid_after,
            "validBefore": self.valid_before,
            "nonce": self.nonce,
        }

    def to_wire(self) -> dict[str, str]:
        """The x402 ``payload.authorization`` object: all strings."""
        return {
            "from": self.from_,
            "to": self.to,
            "value": str(self.value),
            "validAfter": str(self.valid_after),
            "validBefore": str(self.valid_before),
            "nonce": "0x" + self.nonce.hex(),
        }

    @classmethod
    def from_wire(cls, wire: Any) -> TransferWithAuthorization:
        """Parse an x402 ``payload.authorization`` object strictly.

        Raises:
            TypedDataError: a field is missing, not a string, or out of range.
        """
        if not isinstance(wire, dict):
            raise TypedDataError("authorization must be an object")
        return cls(
            from_=checksum(wire.get("from"), "authorization.from"),  # type: ignore[arg-type]
            to=checksum(wire.get("to"), "authorization.to"),  # type: ignore[arg-type]
            value=_wire_int(wire, "value"),
            valid_after=_wire_int(wire, "validAfter"),
            valid_before=_wire_int(wire, "validBefore"),
            nonce=_wire_nonce(wire.get("nonce")),
        )


@dataclass(frozen=True, slots=True)
class ReceiveWithAuthorization(TransferWithAuthorization):
    """An EIP-3009 ``ReceiveWithAuthorization``: like a transfer, but only ``to`` may submit it."""

    PRIMARY_TYPE: ClassVar[str] = "ReceiveWithAuthorization"


@dataclass(frozen=True, slots=True)
class CancelAuthorization:
    """An EIP-3009 ``CancelAuthorization``: burns ``nonce`` of ``authorizer`` before it is used."""

    PRIMARY_TYPE: ClassVar[str] = "CancelAuthorization"
    TYPES: ClassVar[list[dict[str, str]]] = [
        {"name": "authorizer", "type": "address"},
        {"name": "nonce", "type": "bytes32"},
    ]

    authorizer: str
    nonce: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "authorizer", checksum(self.authorizer, "authorizer"))
        _nonce(self.nonce)

    def struct_hash(self) -> bytes:
        """``hashStruct(message)`` per EIP-712."""
        return keccak(_typehash(self.PRIMARY_TYPE) + word_address(self.authorizer) + self.nonce)

    def to_eip712(self) -> dict[str, Any]:
        """Message values for EIP-712 JSON signers."""
        return {"authorizer": self.authorizer, "nonce": self.nonce}


_TYPEHASHES = {
    name: keccak(text=name + "(" + ",".join(f"{f['type']} {f['name']}" for f in fields) + ")")
    for name, fields in (
        ("TransferWithAuthorization", _AUTH_FIELDS),
        ("ReceiveWithAuthorization", _AUTH_FIELDS),
        ("CancelAuthorization", CancelAuthorization.TYPES),
    )
}


def _typehash(primary_type: str) -> bytes:
    return _TYPEHASHES[primary_type]


def sign_authorization(
    signer: Signer, domain: Eip712Domain, message: TransferWithAuthorization | CancelAuthorization
) -> bytes:
    """Sign an EIP-3009 authorization (or cancellation) and return the 65-byte signature.

    Raises:
        TypedDataError: the signer is not the authorizer, since the token would reject it.
    """
    authorizer = message.authorizer if isinstance(message, CancelAuthorization) else message.from_
    if authorizer != signer.address:
        raise TypedDataError("signer address does not match the authorizer in the message")
    return signer.sign_typed_data(domain, message)


def recover_authorizer(
    domain: Eip712Domain, message: TransferWithAuthorization | CancelAuthorization, signature: bytes
) -> ChecksumAddress:
    """Recover who signed ``message`` under ``domain``.

    The caller compares the result with ``message.from_`` (or ``authorizer``): a mismatch
    means a bad signature, or a signature over other fields, domain, or chain.

    Raises:
        SignatureError: the signature is malformed or non-canonical.
    """
    return recover_address(typed_data_digest(domain, message), signature)
