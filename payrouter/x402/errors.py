"""Payment errors with the x402 reason strings clients understand.

Hierarchy::

    PaymentError                 a payment that cannot be accepted (HTTP 402)
      PaymentRejected            verification failed: ``reason`` is an x402 ``invalidReason``
      SettlementFailed           the transfer did not happen (nothing moved)
        SettlementInDoubt        the transfer may have happened: broadcast (or maybe) but unconfirmed

``reason`` is machine-readable (x402.md §2.4 strings); ``message`` is for humans and never
contains key material.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PaymentError", "PaymentRejected", "Reason", "SettlementFailed", "SettlementInDoubt"]


class Reason:
    """x402 reason strings (spec §9 generic codes and the exact/EVM facilitator codes)."""

    INVALID_PAYLOAD = "invalid_payload"
    INVALID_VERSION = "invalid_x402_version"
    UNSUPPORTED_SCHEME = "unsupported_scheme"
    INVALID_NETWORK = "invalid_network"
    INVALID_REQUIREMENTS = "invalid_payment_requirements"
    RECIPIENT_MISMATCH = "invalid_exact_evm_payload_recipient_mismatch"
    VALUE_MISMATCH = "invalid_exact_evm_payload_authorization_value_mismatch"
    VALID_BEFORE = "invalid_exact_evm_payload_authorization_valid_before"
    VALID_AFTER = "invalid_exact_evm_payload_authorization_valid_after"
    SIGNATURE = "invalid_exact_evm_payload_signature"
    INSUFFICIENT_FUNDS = "insufficient_funds"
    NONCE_USED = "invalid_exact_evm_nonce_already_used"
    SIMULATION_FAILED = "invalid_exact_evm_transaction_simulation_failed"
    TRANSACTION_FAILED = "invalid_exact_evm_transaction_failed"
    UNEXPECTED_VERIFY = "unexpected_verify_error"
    UNEXPECTED_SETTLE = "unexpected_settle_error"
    SETTLEMENT_PENDING = "settlement_pending"
    # payrouter's own: the payer took a streamed answer whose payment then failed
    PAYER_OWES = "payer_has_unpaid_stream"


class PaymentError(Exception):
    """A payment was not accepted.

    Attributes:
        reason: x402 machine-readable reason.
        message: human explanation.
        payer: the payer's address when known.
    """

    def __init__(self, reason: str, message: str, payer: str | None = None) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.payer = payer


class PaymentRejected(PaymentError):
    """The payment failed verification; nothing was charged.

    Attributes:
        offer_extra: fields the 402's offer of the rejected payment's scheme carries beyond
            the usual (a corrective offer: e.g. a channel's state for the client to resync).
    """

    def __init__(
        self, reason: str, message: str, payer: str | None = None, offer_extra: dict[str, Any] | None = None
    ) -> None:
        super().__init__(reason, message, payer)
        self.offer_extra = offer_extra


class SettlementFailed(PaymentError):
    """The transfer did not happen.

    Attributes:
        transaction: hash of the attempted transaction, or ``""``.
    """

    def __init__(self, reason: str, message: str, payer: str | None = None, transaction: str = "") -> None:
        super().__init__(reason, message, payer)
        self.transaction = transaction


class SettlementInDoubt(SettlementFailed):
    """The transfer was broadcast (or may have been) and is not confirmed: money may move.

    ``transaction`` is its hash when known; the reason is ``settlement_pending``. Never
    report this as "nothing charged".
    """

    def __init__(self, message: str, payer: str | None = None, transaction: str = "") -> None:
        super().__init__(Reason.SETTLEMENT_PENDING, message, payer, transaction)
