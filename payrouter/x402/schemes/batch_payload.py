"""The ``batch-settlement`` payloads (voucher, deposit, refund) and the scheme's reason strings.

A payment header is attacker input: every field is shape-checked here, and nothing is trusted
until the gate has checked the voucher's signature and the channel's state.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from payrouter.x402.errors import PaymentRejected
from payrouter.x402.wire import Envelope
from wallets import TypedDataError
from wallets.channels import ChannelConfig

__all__ = ["BatchPayload", "ChannelReason", "Deposit", "parse_batch_payload"]


class ChannelReason:
    """x402 ``batch-settlement`` EVM reason strings (as the official clients match them)."""

    PAYLOAD_TYPE = "invalid_batch_settlement_evm_payload_type"
    VOUCHER_PAYLOAD = "invalid_batch_settlement_evm_voucher_payload"
    DEPOSIT_PAYLOAD = "invalid_batch_settlement_evm_deposit_payload"
    REFUND_PAYLOAD = "invalid_batch_settlement_evm_refund_payload"
    CHANNEL_NOT_FOUND = "invalid_batch_settlement_evm_channel_not_found"
    CHANNEL_ID_MISMATCH = "invalid_batch_settlement_evm_channel_id_mismatch"
    RECEIVER_MISMATCH = "invalid_batch_settlement_evm_receiver_mismatch"
    RECEIVER_AUTHORIZER_MISMATCH = "invalid_batch_settlement_evm_receiver_authorizer_mismatch"
    TOKEN_MISMATCH = "invalid_batch_settlement_evm_token_mismatch"
    WITHDRAW_DELAY_MISMATCH = "invalid_batch_settlement_evm_withdraw_delay_mismatch"
    VOUCHER_SIGNATURE = "invalid_batch_settlement_evm_voucher_signature"
    EXCEEDS_BALANCE = "invalid_batch_settlement_evm_cumulative_exceeds_balance"
    BELOW_CLAIMED = "invalid_batch_settlement_evm_cumulative_below_claimed"
    AMOUNT_MISMATCH = "invalid_batch_settlement_evm_cumulative_amount_mismatch"
    CHANNEL_BUSY = "invalid_batch_settlement_evm_channel_busy"
    DEPOSIT_BELOW_MIN = "invalid_batch_settlement_evm_deposit_below_min_deposit"
    DEPOSIT_SIMULATION_FAILED = "invalid_batch_settlement_evm_deposit_simulation_failed"
    DEPOSIT_TRANSACTION_FAILED = "invalid_batch_settlement_evm_deposit_transaction_failed"
    VALID_AFTER = "invalid_batch_settlement_evm_payload_authorization_valid_after"
    VALID_BEFORE = "invalid_batch_settlement_evm_payload_authorization_valid_before"
    ERC3009_REQUIRED = "invalid_batch_settlement_evm_erc3009_authorization_required"
    REFUND_NO_BALANCE = "invalid_batch_settlement_evm_refund_no_balance"
    REFUND_AMOUNT_INVALID = "invalid_batch_settlement_evm_refund_amount_invalid"
    REFUND_TRANSACTION_FAILED = "invalid_batch_settlement_evm_refund_transaction_failed"
    STATE_UNAVAILABLE = "invalid_batch_settlement_evm_verification_state_unavailable"
    # payrouter's own: the payer asked to withdraw; the channel takes no new vouchers
    WITHDRAWING = "invalid_batch_settlement_evm_channel_withdrawing"


_DIGITS = re.compile(r"^(0|[1-9][0-9]{0,38})$")
_HEX32 = re.compile(r"^0x[0-9a-fA-F]{64}$")
_UINT128 = 2**128 - 1


@dataclass(frozen=True, slots=True)
class Deposit:
    """A deposit's ERC-3009 authorization (to the deposit collector, nonce bound to the channel)."""

    amount: int
    valid_after: int
    valid_before: int
    salt: int
    signature: bytes


@dataclass(frozen=True, slots=True)
class BatchPayload:
    """A decoded ``batch-settlement`` payload.

    Attributes:
        kind: ``voucher``, ``deposit`` (a voucher that first opens or tops up the channel) or
            ``refund`` (a zero-charge voucher asking for the unspent balance back).
        config: the channel's identity.
        channel_id: the id the payer says the config hashes to (checked by the scheme).
        signed_max: the voucher's cumulative ``maxClaimableAmount``.
        signature: the voucher's signature.
        deposit: for ``deposit``.
        refund_amount: for ``refund``: how much (None: all that is left).
    """

    kind: Literal["voucher", "deposit", "refund"]
    config: ChannelConfig
    channel_id: bytes
    signed_max: int
    signature: bytes
    deposit: Deposit | None = None
    refund_amount: int | None = None


def _amount(value: Any, where: str, reason: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _UINT128:
        return value
    if isinstance(value, str) and _DIGITS.match(value) and int(value) <= _UINT128:
        return int(value)
    raise PaymentRejected(reason, f"{where} must be a non-negative integer (uint128), as a decimal string")


def _uint(value: Any, where: str, reason: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        if value.startswith("0x") and re.fullmatch(r"0x[0-9a-fA-F]{1,64}", value):
            return int(value, 16)
        if value.isdigit() and len(value) <= 78:
            return int(value)
    raise PaymentRejected(reason, f"{where} must be a non-negative integer")


def _signature(value: Any, where: str, reason: str) -> bytes:
    if isinstance(value, str) and re.fullmatch(r"0x([0-9a-fA-F]{2}){65,}", value):
        return bytes.fromhex(value[2:])
    raise PaymentRejected(reason, f"{where} must be a 0x-prefixed hex signature")


def _object(value: Any, where: str, reason: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PaymentRejected(reason, f"{where} must be an object")
    return value


def parse_batch_payload(envelope: Envelope) -> BatchPayload:
    """Shape-check a ``batch-settlement`` payload.

    Raises:
        PaymentRejected: with the scheme's payload reason and the field named.
    """
    inner = envelope.payload
    kind = inner.get("type")
    if kind not in ("voucher", "deposit", "refund"):
        raise PaymentRejected(ChannelReason.PAYLOAD_TYPE, "payload.type must be voucher, deposit or refund")
    reason = {
        "voucher": ChannelReason.VOUCHER_PAYLOAD,
        "deposit": ChannelReason.DEPOSIT_PAYLOAD,
        "refund": ChannelReason.REFUND_PAYLOAD,
    }[kind]
    try:
        config = ChannelConfig.from_wire(inner.get("channelConfig"))
    except TypedDataError as exc:
        raise PaymentRejected(reason, f"payload.channelConfig: {exc}") from None
    voucher = _object(inner.get("voucher"), "payload.voucher", reason)
    channel_id = voucher.get("channelId")
    if not isinstance(channel_id, str) or not _HEX32.match(channel_id):
        raise PaymentRejected(reason, "payload.voucher.channelId must be 0x and 64 hex digits")
    signed_max = _amount(voucher.get("maxClaimableAmount"), "payload.voucher.maxClaimableAmount", reason)
    signature = _signature(voucher.get("signature"), "payload.voucher.signature", reason)
    deposit = None
    refund_amount = None
    if kind == "deposit":
        dep = _object(inner.get("deposit"), "payload.deposit", reason)
        auth = _object(dep.get("authorization"), "payload.deposit.authorization", reason)
        if "erc3009Authorization" not in auth:
            raise PaymentRejected(
                ChannelReason.ERC3009_REQUIRED, "deposits here are paid with an ERC-3009 authorization (eip3009)"
            )
        erc = _object(auth["erc3009Authorization"], "payload.deposit.authorization.erc3009Authorization", reason)
        where = "payload.deposit.authorization.erc3009Authorization"
        deposit = Deposit(
            amount=_amount(dep.get("amount"), "payload.deposit.amount", reason),
            valid_after=_uint(erc.get("validAfter"), f"{where}.validAfter", reason),
            valid_before=_uint(erc.get("validBefore"), f"{where}.validBefore", reason),
            salt=_uint(erc.get("salt"), f"{where}.salt", reason),
            signature=_signature(erc.get("signature"), f"{where}.signature", reason),
        )
        if deposit.amount == 0:
            raise PaymentRejected(reason, "payload.deposit.amount must be positive")
    elif kind == "refund" and inner.get("amount") is not None:
        refund_amount = _amount(inner.get("amount"), "payload.amount", ChannelReason.REFUND_AMOUNT_INVALID)
        if refund_amount == 0:
            raise PaymentRejected(ChannelReason.REFUND_AMOUNT_INVALID, "payload.amount must be positive")
    return BatchPayload(
        kind=kind,
        config=config,
        channel_id=bytes.fromhex(channel_id[2:]),
        signed_max=signed_max,
        signature=signature,
        deposit=deposit,
        refund_amount=refund_amount,
    )
