"""Typed data of x402 ``batch-settlement`` payment channels (EIP-712, hashed by hand).

A channel is identified by its `ChannelConfig`: the channel id is the full EIP-712 digest of
the config in the batch-settlement domain (``keccak(0x1901 || domainSeparator || structHash)``),
so it binds the chain and the settlement contract. Payers sign cumulative `Voucher` ceilings;
the receiver's authorizer signs `ClaimBatch` es and `Refund` s.

All fields are static ABI types except ``ClaimBatch.claims`` (an array of structs), which
EIP-712 hashes as ``keccak(concat(hashStruct(entry_i)))``. Tests pin every digest to the
official x402 SDK and to eth-account.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

from eth_utils.crypto import keccak

from wallets.eip712 import Eip712Domain, checksum, typed_data_digest, uint256, word_address, word_uint
from wallets.errors import TypedDataError

__all__ = [
    "BATCH_SETTLEMENT_ADDRESS",
    "ERC3009_DEPOSIT_COLLECTOR_ADDRESS",
    "MAX_WITHDRAW_DELAY",
    "MIN_WITHDRAW_DELAY",
    "MULTICALL3_ADDRESS",
    "ChannelConfig",
    "ClaimBatch",
    "ClaimEntry",
    "Refund",
    "Voucher",
    "batch_settlement_domain",
    "deposit_nonce",
]

# Deterministic deployments the official clients address directly on every chain; never taken
# from an offer, so a server cannot redirect deposits.
BATCH_SETTLEMENT_ADDRESS = "0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003"
ERC3009_DEPOSIT_COLLECTOR_ADDRESS = "0x4020806089470a89826cB9fB1f4059150b550004"
# Multicall3's deterministic address: the official facilitator reads channel state and
# simulates deposits through ``tryAggregate`` there, so a chain without it cannot settle.
MULTICALL3_ADDRESS = "0xcA11bde05977b3631167028862bE2a173976CA11"

# Bounds the contract enforces on ``withdrawDelay`` at deposit (15 minutes to 30 days).
MIN_WITHDRAW_DELAY = 900
MAX_WITHDRAW_DELAY = 2_592_000

_UINT40_MAX = 2**40 - 1
_UINT128_MAX = 2**128 - 1
_ZERO_ADDRESS = "0x" + "00" * 20
_BYTES32_HEX = re.compile(r"0x[0-9a-fA-F]{64}")


def batch_settlement_domain(chain_id: int) -> Eip712Domain:
    """The EIP-712 domain every batch-settlement signature and channel id lives in.

    ``{name: "x402 Batch Settlement", version: "1", chainId, verifyingContract: BATCH_SETTLEMENT_ADDRESS}``.

    Raises:
        TypedDataError: ``chain_id`` is not a uint256.
    """
    return Eip712Domain("x402 Batch Settlement", "1", chain_id, BATCH_SETTLEMENT_ADDRESS)


def _type_string(name: str, fields: list[dict[str, str]]) -> str:
    return name + "(" + ",".join(f"{f['type']} {f['name']}" for f in fields) + ")"


def _uint128(value: int, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _UINT128_MAX:
        raise TypedDataError(f"{field} must be an integer in 0..2**128-1")
    return value


def _bytes32(value: bytes, field: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != 32:
        raise TypedDataError(f"{field} must be exactly 32 bytes")
    return value


_CONFIG_FIELDS = [
    {"name": "payer", "type": "address"},
    {"name": "payerAuthorizer", "type": "address"},
    {"name": "receiver", "type": "address"},
    {"name": "receiverAuthorizer", "type": "address"},
    {"name": "token", "type": "address"},
    {"name": "withdrawDelay", "type": "uint40"},
    {"name": "salt", "type": "bytes32"},
]
_CONFIG_TYPEHASH = keccak(text=_type_string("ChannelConfig", _CONFIG_FIELDS))
_WIRE_ADDRESS_FIELDS = (
    ("payer", "payer"),
    ("payer_authorizer", "payerAuthorizer"),
    ("receiver", "receiver"),
    ("receiver_authorizer", "receiverAuthorizer"),
    ("token", "token"),
)


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    """The immutable identity of a payment channel.

    Attributes:
        payer: who deposits and gets refunds.
        payer_authorizer: the EOA whose ECDSA signature makes vouchers valid; the zero address
            means the payer itself signs (EOA or ERC-1271 wallet).
        receiver: who is paid on settle (the offer's ``payTo``).
        receiver_authorizer: signs claim batches and refunds for the receiver.
        token: the ERC-20 held in the channel.
        withdraw_delay: seconds a payer's withdrawal waits (uint40; the contract only accepts
            deposits when it is in ``MIN_WITHDRAW_DELAY..MAX_WITHDRAW_DELAY``, which callers check).
        salt: 32 bytes telling apart channels with the same parties.

    Addresses are stored checksummed.

    Raises:
        TypedDataError: on construction, if any field is malformed or out of range.
    """

    PRIMARY_TYPE: ClassVar[str] = "ChannelConfig"
    TYPES: ClassVar[list[dict[str, str]]] = _CONFIG_FIELDS

    payer: str
    payer_authorizer: str
    receiver: str
    receiver_authorizer: str
    token: str
    withdraw_delay: int
    salt: bytes

    def __post_init__(self) -> None:
        for attr, wire_name in _WIRE_ADDRESS_FIELDS:
            object.__setattr__(self, attr, checksum(getattr(self, attr), wire_name))
        if (
            isinstance(self.withdraw_delay, bool)
            or not isinstance(self.withdraw_delay, int)
            or not 0 <= self.withdraw_delay <= _UINT40_MAX
        ):
            raise TypedDataError("withdrawDelay must be an integer in 0..2**40-1")
        _bytes32(self.salt, "salt")

    def struct_hash(self) -> bytes:
        """``hashStruct(config)`` per EIP-712."""
        return keccak(
            _CONFIG_TYPEHASH
            + word_address(self.payer)
            + word_address(self.payer_authorizer)
            + word_address(self.receiver)
            + word_address(self.receiver_authorizer)
            + word_address(self.token)
            + word_uint(self.withdraw_delay)
            + self.salt
        )

    def to_eip712(self) -> dict[str, Any]:
        """Message values for EIP-712 JSON signers (``salt`` as bytes)."""
        return {
            "payer": self.payer,
            "payerAuthorizer": self.payer_authorizer,
            "receiver": self.receiver,
            "receiverAuthorizer": self.receiver_authorizer,
            "token": self.token,
            "withdrawDelay": self.withdraw_delay,
            "salt": self.salt,
        }

    def channel_id(self, chain_id: int) -> bytes:
        """The 32-byte channel id on ``chain_id``: the EIP-712 digest of this config."""
        return _channel_id(self, chain_id)

    def to_wire(self) -> dict[str, Any]:
        """The x402 ``channelConfig`` JSON object (``withdrawDelay`` a JSON integer, as clients require)."""
        return {
            "payer": self.payer,
            "payerAuthorizer": self.payer_authorizer,
            "receiver": self.receiver,
            "receiverAuthorizer": self.receiver_authorizer,
            "token": self.token,
            "withdrawDelay": self.withdraw_delay,
            "salt": "0x" + self.salt.hex(),
        }

    @classmethod
    def from_wire(cls, obj: Any) -> ChannelConfig:
        """Parse an x402 ``channelConfig`` object strictly.

        Addresses must be 0x-hex (lowercase or valid EIP-55), ``withdrawDelay`` a JSON integer
        (not a string or bool), ``salt`` ``0x`` + 64 hex digits. Extra keys are ignored.

        Raises:
            TypedDataError: not an object, or a field missing or malformed; the message names
                the field (``channelConfig.<name>``) and never echoes the input.
        """
        if not isinstance(obj, dict):
            raise TypedDataError("channelConfig must be an object")
        values = tuple(obj.get(name) for name in _WIRE_FIELDS)
        if all(type(value) in (str, int) for value in values):  # hashable: every voucher repeats it
            return _config_from_wire(values)
        return cls._parse_wire(obj)

    @classmethod
    def _parse_wire(cls, obj: dict[str, Any]) -> ChannelConfig:
        addresses = {attr: _wire_address(obj.get(wire_name), wire_name) for attr, wire_name in _WIRE_ADDRESS_FIELDS}
        delay = obj.get("withdrawDelay")
        if isinstance(delay, bool) or not isinstance(delay, int) or not 0 <= delay <= _UINT40_MAX:
            raise TypedDataError("channelConfig.withdrawDelay must be a JSON integer in 0..2**40-1")
        salt = obj.get("salt")
        if not isinstance(salt, str) or not _BYTES32_HEX.fullmatch(salt):
            raise TypedDataError("channelConfig.salt must be 0x followed by 64 hex digits")
        return cls(withdraw_delay=delay, salt=bytes.fromhex(salt[2:]), **addresses)

    @property
    def has_payer_authorizer(self) -> bool:
        """True when vouchers are plain ECDSA by ``payer_authorizer`` (else the payer signs, maybe ERC-1271)."""
        return self.payer_authorizer != _ZERO_ADDRESS


_WIRE_FIELDS = ("payer", "payerAuthorizer", "receiver", "receiverAuthorizer", "token", "withdrawDelay", "salt")


# A channel's every voucher carries its config: parsed (five EIP-55 checks) once per config.
@lru_cache(maxsize=65_536)
def _config_from_wire(values: tuple[Any, ...]) -> ChannelConfig:
    return ChannelConfig._parse_wire(dict(zip(_WIRE_FIELDS, values, strict=True)))


# ... and its id: two keccaks and five ABI words, once.
@lru_cache(maxsize=65_536)
def _channel_id(config: ChannelConfig, chain_id: int) -> bytes:
    return typed_data_digest(batch_settlement_domain(chain_id), config)


def _wire_address(value: Any, wire_name: str) -> str:
    field = f"channelConfig.{wire_name}"
    address = checksum(value, field)
    # eth-utils' is_address lets a wrong EIP-55 checksum through; a mixed-case address that is
    # not the checksum is a typo, so refuse it rather than guess.
    body = value[2:]
    if body != body.lower() and body != body.upper() and value != address:
        raise TypedDataError(f"{field} has a wrong EIP-55 checksum")
    return address


_VOUCHER_FIELDS = [
    {"name": "channelId", "type": "bytes32"},
    {"name": "maxClaimableAmount", "type": "uint128"},
]
_VOUCHER_TYPEHASH = keccak(text=_type_string("Voucher", _VOUCHER_FIELDS))


@dataclass(frozen=True, slots=True)
class Voucher:
    """A payer's signed promise: the receiver may claim up to ``max_claimable`` in total.

    Cumulative, so each new voucher supersedes the previous ones of the channel.

    Raises:
        TypedDataError: ``channel_id`` is not 32 bytes or ``max_claimable`` not a uint128.
    """

    PRIMARY_TYPE: ClassVar[str] = "Voucher"
    TYPES: ClassVar[list[dict[str, str]]] = _VOUCHER_FIELDS

    channel_id: bytes
    max_claimable: int

    def __post_init__(self) -> None:
        _bytes32(self.channel_id, "channelId")
        _uint128(self.max_claimable, "maxClaimableAmount")

    def struct_hash(self) -> bytes:
        """``hashStruct(voucher)`` per EIP-712."""
        return keccak(_VOUCHER_TYPEHASH + self.channel_id + word_uint(self.max_claimable))

    def to_eip712(self) -> dict[str, Any]:
        """Message values for EIP-712 JSON signers."""
        return {"channelId": self.channel_id, "maxClaimableAmount": self.max_claimable}


_REFUND_FIELDS = [
    {"name": "channelId", "type": "bytes32"},
    {"name": "nonce", "type": "uint256"},
    {"name": "amount", "type": "uint128"},
]
_REFUND_TYPEHASH = keccak(text=_type_string("Refund", _REFUND_FIELDS))


@dataclass(frozen=True, slots=True)
class Refund:
    """The receiver authorizer's consent to return ``amount`` to the payer.

    Valid once: ``nonce`` must equal the channel's onchain ``refundNonce``.

    Raises:
        TypedDataError: ``channel_id`` not 32 bytes, ``nonce`` not a uint256, ``amount`` not a uint128.
    """

    PRIMARY_TYPE: ClassVar[str] = "Refund"
    TYPES: ClassVar[list[dict[str, str]]] = _REFUND_FIELDS

    channel_id: bytes
    nonce: int
    amount: int

    def __post_init__(self) -> None:
        _bytes32(self.channel_id, "channelId")
        uint256(self.nonce, "nonce")
        _uint128(self.amount, "amount")

    def struct_hash(self) -> bytes:
        """``hashStruct(refund)`` per EIP-712."""
        return keccak(_REFUND_TYPEHASH + self.channel_id + word_uint(self.nonce) + word_uint(self.amount))

    def to_eip712(self) -> dict[str, Any]:
        """Message values for EIP-712 JSON signers."""
        return {"channelId": self.channel_id, "nonce": self.nonce, "amount": self.amount}


_ENTRY_FIELDS = [
    {"name": "channelId", "type": "bytes32"},
    {"name": "maxClaimableAmount", "type": "uint128"},
    {"name": "totalClaimed", "type": "uint128"},
]
_ENTRY_TYPE = _type_string("ClaimEntry", _ENTRY_FIELDS)
_ENTRY_TYPEHASH = keccak(text=_ENTRY_TYPE)
_BATCH_FIELDS = [{"name": "claims", "type": "ClaimEntry[]"}]
# EIP-712 appends referenced struct types to the primary type's string.
_BATCH_TYPEHASH = keccak(text=_type_string("ClaimBatch", _BATCH_FIELDS) + _ENTRY_TYPE)


@dataclass(frozen=True, slots=True)
class ClaimEntry:
    """One row of a claim batch: raise the channel's ``totalClaimed`` to ``total_claimed``.

    ``max_claimable`` is the payer's voucher ceiling the row is backed by.

    Raises:
        TypedDataError: ``channel_id`` not 32 bytes, or an amount not a uint128.
    """

    PRIMARY_TYPE: ClassVar[str] = "ClaimEntry"
    TYPES: ClassVar[list[dict[str, str]]] = _ENTRY_FIELDS

    channel_id: bytes
    max_claimable: int
    total_claimed: int

    def __post_init__(self) -> None:
        _bytes32(self.channel_id, "channelId")
        _uint128(self.max_claimable, "maxClaimableAmount")
        _uint128(self.total_claimed, "totalClaimed")

    def struct_hash(self) -> bytes:
        """``hashStruct(entry)`` per EIP-712."""
        return keccak(_ENTRY_TYPEHASH + self.channel_id + word_uint(self.max_claimable) + word_uint(self.total_claimed))

    def to_eip712(self) -> dict[str, Any]:
        """Message values for EIP-712 JSON signers."""
        return {
            "channelId": self.channel_id,
            "maxClaimableAmount": self.max_claimable,
            "totalClaimed": self.total_claimed,
        }


@dataclass(frozen=True, slots=True)
class ClaimBatch:
    """What the receiver authorizer signs for ``claimWithSignature``: the batch's rows, in order.

    ``TYPES`` lists only the primary type; `ClaimBatch.eip712_types` adds ``ClaimEntry`` for
    JSON signers (`wallets.full_message` knows one struct type only).

    Raises:
        TypedDataError: ``entries`` is not a tuple of `ClaimEntry`.
    """

    PRIMARY_TYPE: ClassVar[str] = "ClaimBatch"
    TYPES: ClassVar[list[dict[str, str]]] = _BATCH_FIELDS

    entries: tuple[ClaimEntry, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.entries, tuple) or not all(isinstance(e, ClaimEntry) for e in self.entries):
            raise TypedDataError("claims must be a tuple of ClaimEntry")

    @staticmethod
    def eip712_types() -> dict[str, list[dict[str, str]]]:
        """Both struct types of the batch, as EIP-712 JSON ``types`` (without ``EIP712Domain``)."""
        return {"ClaimBatch": list(_BATCH_FIELDS), "ClaimEntry": list(_ENTRY_FIELDS)}

    def struct_hash(self) -> bytes:
        """``hashStruct(batch)``: the array is ``keccak`` of its entries' struct hashes."""
        return keccak(_BATCH_TYPEHASH + keccak(b"".join(e.struct_hash() for e in self.entries)))

    def to_eip712(self) -> dict[str, Any]:
        """Message values for EIP-712 JSON signers."""
        return {"claims": [e.to_eip712() for e in self.entries]}


def deposit_nonce(channel_id: bytes, salt: int) -> bytes:
    """The ERC-3009 nonce of a deposit: ``keccak(abi.encode(bytes32 channelId, uint256 salt))``.

    The collector recomputes it, so a payer's ``ReceiveWithAuthorization`` (``to`` = the
    ERC-3009 deposit collector) is usable for this channel only.

    Raises:
        TypedDataError: ``channel_id`` not 32 bytes or ``salt`` not a uint256.
    """
    return keccak(_bytes32(channel_id, "channelId") + word_uint(uint256(salt, "salt")))
