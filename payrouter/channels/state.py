"""What the server knows about one batch-settlement payment channel, and what a reservation found.

Amounts are uint128 (nonces uint256) on chain: Python ints here, decimal strings in storage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "MAX_TTL_MS",
    "ChannelState",
    "InvalidCharge",
    "ReserveOutcome",
    "Reserved",
    "channel_key_id",
    "check_uint",
    "expected_charged",
]

# a reservation's longest life (a day): far above any request, and keeps times below 2**53
MAX_TTL_MS = 86_400_000

_CHANNEL_ID = re.compile(r"0x[0-9a-f]{64}")

ReserveOutcome = Literal["ok", "mismatch", "busy", "exceeds_balance", "not_found", "withdrawing"]


class InvalidCharge(ValueError):
    """A commit's charge is negative or goes past the voucher the request reserved with."""


def channel_key_id(channel_id: str) -> str:
    """``channel_id`` as stored: lower-case ``0x`` + 64 hex digits (a bytes32).

    The id becomes part of a Redis key (its hash tag), so anything else is refused rather than
    stored under a key that another spelling of the same channel would miss.

    Raises:
        ValueError: not a bytes32 in hex.
    """
    lowered = channel_id.lower()
    if not _CHANNEL_ID.fullmatch(lowered):
        raise ValueError(f"channel id must be 0x + 64 hex digits, got {channel_id!r}")
    return lowered


def check_uint(name: str, value: int, bits: int = 128) -> int:
    """``value`` if it is an int in ``[0, 2**bits)``.

    Raises:
        ValueError: out of range (or not an int: a bool or a float is refused too).
    """
    if type(value) is not int or not 0 <= value < 2**bits:
        raise ValueError(f"{name} must be a uint{bits}, got {value!r}")
    return value


def expected_charged(*, amount: int, signed_max: int, token: str, ttl_ms: int, refund: bool) -> int:
    """The ``charged`` a reservation requires: ``signed_max - amount`` (a refund's voucher
    adds nothing: ``signed_max``). Negative when no stored ``charged`` can match.

    Raises:
        ValueError: an amount out of range, an empty token or ``ttl_ms`` out of range.
    """
    check_uint("amount", amount)
    check_uint("signed_max", signed_max)
    if not token:
        raise ValueError("a reservation needs a non-empty token")
    if type(ttl_ms) is not int or not 0 < ttl_ms <= MAX_TTL_MS:
        raise ValueError(f"ttl_ms must be an int in [1, {MAX_TTL_MS}], got {ttl_ms!r}")
    return signed_max if refund else signed_max - amount


@dataclass(frozen=True, slots=True)
class ChannelState:
    """One channel as the server's store holds it.

    Attributes:
        channel_id: lower-case ``0x`` hex (the EIP-712 digest of the config).
        config: the channel config as wire JSON (opaque to the store).
        payer: the config's payer.
        balance, total_claimed, withdraw_requested_at, refund_nonce: the mirror of the contract
            (``withdraw_requested_at`` is the pending withdrawal's start, 0 when none).
        synced_at_ms: when that mirror was read from the chain (Unix ms).
        charged: cumulative amount charged for requests served; never below ``total_claimed``.
        signed_max, signature: the latest voucher accepted (0 and "" before the first).
        pending: the token of the request in flight ("" when none).
        pending_until_ms: when that reservation lapses (Unix ms; 0 when none). A lapsed one
            no longer blocks other requests.
    """

    channel_id: str
    config: str
    payer: str
    balance: int
    total_claimed: int
    withdraw_requested_at: int
    refund_nonce: int
    synced_at_ms: int
    charged: int
    signed_max: int
    signature: str
    pending: str
    pending_until_ms: int

    def to_wire(self) -> dict[str, Any]:
        """The x402 ``channelState`` object (amounts as decimal strings, as the SDK clients expect)."""
        return {
            "channelId": self.channel_id,
            "balance": str(self.balance),
            "totalClaimed": str(self.total_claimed),
            "withdrawRequestedAt": self.withdraw_requested_at,
            "refundNonce": str(self.refund_nonce),
            "chargedCumulativeAmount": str(self.charged),
        }


@dataclass(frozen=True, slots=True)
class Reserved:
    """What `ChannelStore.reserve` found.

    Attributes:
        kind: ``ok`` (the caller holds the channel until commit, release or lapse) or why not.
        state: the channel as stored after the attempt (None only for ``not_found``): what the
            corrective 402 reports back (``chargedCumulativeAmount``, the last voucher).
    """

    kind: ReserveOutcome
    state: ChannelState | None

    @property
    def ok(self) -> bool:
        """True when the reservation was taken."""
        return self.kind == "ok"
