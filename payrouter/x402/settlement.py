"""A verified payment this request has claimed: settle it once, or give the claim back.

One place decides what every outcome leaves behind in the store, for plain answers and
streams alike: settled (claim kept as ``settled:<tx>``, ledger entry), broadcast but
unconfirmed (claim kept as ``pending:<tx>`` so the payment cannot be presented again),
failed or crashed (claim released: nothing moved, the payment may be presented again).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from payrouter.quoting import PricedRoute
from payrouter.services import Services
from payrouter.store import StoreError
from payrouter.x402.asgi import ledger_entry
from payrouter.x402.errors import Reason, SettlementFailed
from payrouter.x402.responses import settlement_header
from payrouter.x402.wire import PaymentPayload

__all__ = ["ClaimedPayment", "SettleOutcome"]

log = logging.getLogger("payrouter.gate")


@dataclass(frozen=True, slots=True)
class SettleOutcome:
    """What `ClaimedPayment.settle` did.

    Attributes:
        ok: the money moved.
        receipt: the ``PAYMENT-RESPONSE`` (or v1 ``X-PAYMENT-RESPONSE``) header, success or not.
        reason: the x402 error reason when not ok.
        message: a human explanation when not ok.
        crashed: the facilitator failed unexpectedly (not a refusal): a 503, not a 402.
    """

    ok: bool
    receipt: tuple[bytes, bytes]
    reason: str | None = None
    message: str = ""
    crashed: bool = False


@dataclass(frozen=True, slots=True)
class ClaimedPayment:
    """A verified payment whose single-use claim (``claim_key`` owned by ``owner``) this request holds."""

    services: Services
    payment: PaymentPayload
    priced: PricedRoute
    payer: str
    claim_key: str
    owner: str
    ttl: int
    digest: str

    async def release(self) -> None:
        """Give the claim back (nothing was charged; the payment may be presented again)."""
        await self.services.store.release(self.claim_key, self.owner)

    async def settle(self) -> SettleOutcome:
        """Settle through the facilitator and record the outcome.

        Raises:
            StoreError: the claim could not be released or marked pending after a failure.
        """
        store, requirements = self.services.store, self.priced.requirements
        try:
            result = await self.services.facilitator.settle(self.payment, requirements)
        except SettlementFailed as exc:
            if exc.reason == Reason.SETTLEMENT_PENDING:
                await store.replace(self.claim_key, self.owner, f"pending:{exc.transaction}", self.ttl)
            else:
                await self.release()
            log.warning("settlement failed: %s (%s) tx=%s", exc.reason, exc.message, exc.transaction)
            return SettleOutcome(False, self._receipt(False, exc.transaction, exc.reason), exc.reason, exc.message)
        except Exception:
            log.exception("settlement crashed")
            await self.release()
            reason = Reason.UNEXPECTED_SETTLE
            return SettleOutcome(False, self._receipt(False, "", reason), reason, "settlement unavailable", True)
        # The money moved: record it, but a store hiccup now must not hide the answer paid for.
        try:
            await asyncio.gather(
                store.replace(self.claim_key, self.owner, f"settled:{result.transaction}", self.ttl),
                store.append_ledger(
                    ledger_entry(self.payer, self.priced, result.network, result.transaction, self.digest)
                ),
            )
        except StoreError as exc:
            log.error("payment %s settled in %s but not recorded: %s", self.claim_key, result.transaction, exc)
        return SettleOutcome(True, self._receipt(True, result.transaction))

    def _receipt(self, success: bool, transaction: str, reason: str | None = None) -> tuple[bytes, bytes]:
        network = self.priced.requirements.network
        return settlement_header(self.payment.version, success, network, self.payer, transaction, reason)
