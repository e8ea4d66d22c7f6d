"""The `Facilitator` protocol: verify a payment, settle it, say what is supported."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from payrouter.x402.requirements import Requirements
from payrouter.x402.wire import PaymentPayload

__all__ = ["Facilitator", "SettleResult"]


@dataclass(frozen=True, slots=True)
class SettleResult:
    """A settled payment: the transaction that moved the money."""

    transaction: str
    payer: str
    network: str


class Facilitator(Protocol):
    """Checks and executes ``exact`` EVM payments.

    `verify` must not move money; `settle` moves it at most once per authorization.
    """

    async def verify(self, payment: PaymentPayload, requirements: Requirements) -> str:
        """Check ``payment`` against ``requirements``; return the payer address.

        Raises:
            PaymentRejected: with the x402 reason of the first failed rule.
        """
        ...

    async def settle(self, payment: PaymentPayload, requirements: Requirements) -> SettleResult:
        """Execute the transfer and wait for it to be mined.

        Raises:
            SettlementInDoubt: broadcast (or maybe broadcast) and not confirmed: money may
                move; ``transaction`` is the hash when known.
            SettlementFailed: the transfer did not happen and our attempt can no longer make
                it happen.
        """
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
