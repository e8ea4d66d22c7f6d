"""The seam between the payment transports and the x402 schemes: one `SchemePayer` per scheme.

A transport asks `payrouter.client.payment.choose` which option to pay, then hands it to the
payer of that option's scheme: `ExactPayer` here, `payrouter.client.channel_payer.ChannelPayer`
for ``batch-settlement``. A payer reserves budget and signs (`SchemePayer.pay`), reads the
server's answer (`SchemePayer.settle`) and, for schemes that have one, resyncs after a
corrective 402 (`SchemePayer.recover`).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Protocol

import httpx

from payrouter.client.payment import Choice, Offer, SignedPayment, sign_choice
from payrouter.client.policy import BudgetStore, SpendingPolicy
from wallets import Signer

__all__ = ["ExactPayer", "Receipt", "SchemePayer", "payment_response_header"]


@dataclass(frozen=True, slots=True)
class Receipt:
    """What was paid for a response.

    Attributes:
        success: whether the server reports the payment settled.
        transaction: the settlement transaction hash ("" when none; a channel voucher has none).
        network, payer: as the server reports them.
        amount, asset, pay_to: what was signed (``batch-settlement``: the request's maximum).
        error: the server's reason when ``success`` is False.
        scheme: ``exact`` or ``batch-settlement``.
        charged: what the server charged (``batch-settlement``; None for ``exact``, where the
            charge is ``amount``, or when a channel server did not report it).
        channel_id: the payment channel (``batch-settlement``).
        deposit: what this payment deposited into the channel (0: none).
    """

    success: bool
    transaction: str
    network: str
    payer: str | None
    amount: int
    asset: str
    pay_to: str
    error: str | None = None
    scheme: str = "exact"
    charged: int | None = None
    channel_id: str | None = None
    deposit: int = 0


def payment_response_header(response: httpx.Response) -> str | None:
    """The settlement header of a response (v2 ``PAYMENT-RESPONSE`` or v1 ``X-PAYMENT-RESPONSE``)."""
    value: str | None = response.headers.get("payment-response") or response.headers.get("x-payment-response")
    return value


class SchemePayer(Protocol):
    """Pays the options of one x402 scheme."""

    def pay(self, offer: Offer, choice: Choice, url: str) -> tuple[SignedPayment, str | None]:
        """Reserve the budget the payment needs and sign it; return it with the reservation id
        (None when nothing was reserved).

        Raises:
            PaymentRefused: before anything is signed.
        """
        ...

    def settle(self, payment: SignedPayment, response: httpx.Response) -> tuple[Receipt | None, bool]:
        """Read the server's answer to the paid request: its receipt (None if the server sent
        none) and whether the reserved money moved (False gives the reservation back)."""
        ...

    def recover(self, payment: SignedPayment, response: httpx.Response) -> bool:
        """After a 402 to the paid request (body read): True when local state was corrected and
        paying again once may succeed."""
        ...


class ExactPayer:
    """`SchemePayer` of ``exact``: one EIP-3009 transfer of the whole price per request."""

    def __init__(self, signer: Signer, policy: SpendingPolicy, budget: BudgetStore) -> None:
        self.signer = signer
        self.policy = policy
        self.budget = budget

    def pay(self, offer: Offer, choice: Choice, url: str) -> tuple[SignedPayment, str | None]:
        reservation = self.budget.reserve(choice.amount, self.policy.windows())
        try:
            return sign_choice(offer, self.signer, choice), reservation
        except BaseException:
            self.budget.release(reservation)
            raise

    def settle(self, payment: SignedPayment, response: httpx.Response) -> tuple[Receipt | None, bool]:
        value = payment_response_header(response)
        receipt = None
        if value:
            try:
                data = json.loads(base64.b64decode(value))
            except ValueError:
                data = None
            if isinstance(data, dict):
                receipt = Receipt(
                    success=bool(data.get("success")),
                    transaction=str(data.get("transaction") or ""),
                    network=str(data.get("network") or payment.network),
                    payer=data.get("payer"),
                    amount=payment.amount,
                    asset=payment.asset,
                    pay_to=payment.pay_to,
                    error=data.get("errorReason"),
                )
        # the money moved only with a successful receipt, or a 2xx without one
        paid = receipt.success if receipt is not None else response.status_code < 400
        return receipt, paid

    def recover(self, payment: SignedPayment, response: httpx.Response) -> bool:
        return False  # an exact 402 is final: the signed transfer was refused
