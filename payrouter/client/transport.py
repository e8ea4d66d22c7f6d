"""httpx transports that pay x402 ``exact`` 402s under a spending policy, sync and async.

On a 402 the transport reads the offer, lets the policy refuse it (before anything is
signed), reserves the amount in the budget, signs, and retries the request once with the
payment. The parsed settlement receipt is on ``response.extensions["x402_receipt"]``.

A paid request whose outcome is unknown (the connection broke after the payment was sent) is
remembered: retrying the same request re-sends the same signed payment instead of a new one,
so it can never be paid twice. payrouter (and any server honouring x402's payment-identifier)
answers such a retry with the original response.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass

import httpx

from payrouter.client.payment import Offer, SignedPayment, choose, read_offer, sign_choice
from payrouter.client.policy import BudgetStore, MemoryBudgetStore, SpendingPolicy
from wallets import Signer

__all__ = ["AsyncPaymentTransport", "PaymentPending", "PaymentTransport", "Receipt", "receipt_of"]

RECEIPT_KEY = "x402_receipt"
_RETRY_FLAG = "x402_paid_attempt"


@dataclass(frozen=True, slots=True)
class Receipt:
    """What was paid for a response.

    Attributes:
        success: whether the server reports the payment settled.
        transaction: the settlement transaction hash ("" when none).
        network, payer: as the server reports them.
        amount, asset, pay_to: what was signed.
        error: the server's reason when ``success`` is False.
    """

    success: bool
    transaction: str
    network: str
    payer: str | None
    amount: int
    asset: str
    pay_to: str
    error: str | None = None


class PaymentPending(Exception):
    """A payment for this same request was sent before and its outcome is unknown.

    Paying again could pay twice, so the transport refuses until the earlier authorization
    expires (``valid_before``, unix seconds); retrying the request re-sends that payment.
    """

    def __init__(self, message: str, valid_before: int) -> None:
        super().__init__(message)
        self.valid_before = valid_before


def receipt_of(response: httpx.Response) -> Receipt | None:
    """The payment receipt attached by a payment transport, or None if nothing was paid."""
    receipt = response.extensions.get(RECEIPT_KEY)
    return receipt if isinstance(receipt, Receipt) else None


def _request_key(request: httpx.Request, body: bytes) -> str:
    explicit: str | None = request.headers.get("idempotency-key")
    if explicit:
        return "key:" + explicit
    digest = hashlib.sha256(body).hexdigest()
    return f"{request.method} {request.url} {digest}"


def _with_payment(request: httpx.Request, body: bytes, payment: SignedPayment) -> httpx.Request:
    headers = request.headers.copy()
    headers[payment.header_name] = payment.header_value
    extensions = {**request.extensions, _RETRY_FLAG: True}
    # type(request): the same class the client uses (httpx, or httpx2 for the openai/anthropic SDKs)
    return type(request)(request.method, request.url, headers=headers, content=body, extensions=extensions)


def _receipt(response: httpx.Response, payment: SignedPayment) -> Receipt | None:
    value = response.headers.get("payment-response") or response.headers.get("x-payment-response")
    if not value:
        return None
    try:
        data = json.loads(base64.b64decode(value))
    except ValueError:
        return None
    return Receipt(
        success=bool(data.get("success")),
        transaction=str(data.get("transaction") or ""),
        network=str(data.get("network") or payment.network),
        payer=data.get("payer"),
        amount=payment.amount,
        asset=payment.asset,
        pay_to=payment.pay_to,
        error=data.get("errorReason"),
    )


class _Payer:
    """The transport-independent part: policy, budget, signing, pending payments."""

    def __init__(self, signer: Signer, policy: SpendingPolicy, budget: BudgetStore | None) -> None:
        self.signer = signer
        self.policy = policy
        self.budget = budget or MemoryBudgetStore()
        self.pending: dict[str, SignedPayment] = {}

    def pending_for(self, key: str) -> SignedPayment | None:
        payment = self.pending.get(key)
        if payment is not None and payment.valid_before <= time.time():
            del self.pending[key]  # expired: it can no longer be settled, paying anew is safe
            return None
        return payment

    def pay(self, key: str, offer: Offer) -> tuple[SignedPayment, str]:
        """Check, reserve and sign; raises PaymentRefused before signing anything.

        The payment stays pending for ``key`` until `finish`: if the answer never arrives, a
        retry of the same request re-sends it instead of paying again.
        """
        choice = choose(offer, self.policy)
        reservation = self.budget.reserve(choice.amount, self.policy.windows())
        try:
            payment = sign_choice(offer, self.signer, choice)
        except BaseException:
            self.budget.release(reservation)
            raise
        self.pending[key] = payment
        return payment, reservation

    @staticmethod
    def replay_error(response: httpx.Response, pending: SignedPayment) -> PaymentPending | None:
        """The error for a re-sent payment the server only calls used, or None to go on."""
        if response.status_code != 402 or _receipt(response, pending) is not None:
            return None
        return PaymentPending(
            "a payment for this request was already sent and may have been taken; "
            "the server did not return its response",
            pending.valid_before,
        )

    def finish(self, key: str, response: httpx.Response, payment: SignedPayment, reservation: str | None) -> None:
        """The answer arrived: forget the pending payment, settle the budget, attach the receipt.

        A ``settlement_pending`` receipt means the money may still move: the payment stays
        pending (and its budget spent), so retrying the request re-sends it and gets the answer.
        """
        receipt = _receipt(response, payment)
        if receipt is not None and not receipt.success and receipt.error == "settlement_pending":
            response.extensions[RECEIPT_KEY] = receipt
            return
        del self.pending[key]
        # the money moved only with a successful receipt or a 2xx; anything else gives it back
        paid = (receipt is not None and receipt.success) or (receipt is None and response.status_code < 400)
        if not paid and reservation is not None:
            self.budget.release(reservation)
        if receipt is not None:
            response.extensions[RECEIPT_KEY] = receipt


class PaymentTransport(httpx.BaseTransport):
    """A sync httpx transport that pays 402s.

    Args:
        signer: the agent's key (`wallets.LocalSigner` or any `wallets.Signer`).
        policy: spending limits; refused payments raise `PaymentRefused` before signing.
        budget: where rolling budgets are kept (default: in memory; use `FileBudgetStore`
            or `RedisBudgetStore` to survive restarts).
        transport: the transport to wrap (default: httpx's).
    """

    def __init__(
        self,
        signer: Signer,
        policy: SpendingPolicy | None = None,
        budget: BudgetStore | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._payer = _Payer(signer, policy or SpendingPolicy(), budget)
        self._inner = transport or httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        key = _request_key(request, body)
        pending = self._payer.pending_for(key)
        if pending is not None:
            response = self._inner.handle_request(_with_payment(request, body, pending))
            if (error := self._payer.replay_error(response, pending)) is not None:
                response.close()
                raise error
            self._payer.finish(key, response, pending, None)
            return response
        response = self._inner.handle_request(request)
        if response.status_code != 402 or request.extensions.get(_RETRY_FLAG):
            return response
        offer = read_offer(response.headers, response.read())
        response.close()
        payment, reservation = self._payer.pay(key, offer)
        # A transport error here leaves the outcome unknown: the payment stays pending for this
        # request. The body is not read, so streamed answers stream.
        paid = self._inner.handle_request(_with_payment(request, body, payment))
        self._payer.finish(key, paid, payment, reservation)
        return paid

    def close(self) -> None:
        self._inner.close()


class AsyncPaymentTransport(httpx.AsyncBaseTransport):
    """The async twin of `PaymentTransport` (same arguments, same behaviour)."""

    def __init__(
        self,
        signer: Signer,
        policy: SpendingPolicy | None = None,
        budget: BudgetStore | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._payer = _Payer(signer, policy or SpendingPolicy(), budget)
        self._inner = transport or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        key = _request_key(request, body)
        pending = self._payer.pending_for(key)
        if pending is not None:
            response = await self._inner.handle_async_request(_with_payment(request, body, pending))
            if (error := self._payer.replay_error(response, pending)) is not None:
                await response.aclose()
                raise error
            self._payer.finish(key, response, pending, None)
            return response
        response = await self._inner.handle_async_request(request)
        if response.status_code != 402 or request.extensions.get(_RETRY_FLAG):
            return response
        offer = read_offer(response.headers, await response.aread())
        await response.aclose()
        payment, reservation = self._payer.pay(key, offer)
        paid = await self._inner.handle_async_request(_with_payment(request, body, payment))
        self._payer.finish(key, paid, payment, reservation)
        return paid

    async def aclose(self) -> None:
        await self._inner.aclose()
