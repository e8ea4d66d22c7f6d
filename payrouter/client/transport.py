"""httpx transports that pay x402 402s under a spending policy, sync and async.

On a 402 the transport reads the offer, picks an option (`payrouter.client.payment.choose`),
lets the policy refuse it before anything is signed, and hands it to the payer of its scheme
(`payrouter.client.schemes`): ``exact`` reserves the price in the budget and signs a transfer;
``batch-settlement`` (when channels are enabled) signs a voucher on a payment channel and
reserves only deposits. The request is retried once with the payment; a corrective 402 of a
channel payment is resynced and paid once more. The parsed receipt is on
``response.extensions["x402_receipt"]``.

A paid request whose outcome is unknown (the connection broke after the payment was sent) is
remembered: retrying the same request re-sends the same signed payment instead of a new one,
so it can never be paid twice. payrouter (and any server honouring x402's payment-identifier)
answers such a retry with the original response.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import threading
import time
from typing import Any

import httpx

from payrouter.client.channel_payer import ChannelOptions, ChannelPayer, ChannelTermsChanged
from payrouter.client.payment import BATCH, EXACT, Offer, PaymentOfferError, SignedPayment, choose, read_offer
from payrouter.client.policy import BudgetStore, MemoryBudgetStore, PaymentRefused, SpendingPolicy
from payrouter.client.schemes import ExactPayer, Receipt, SchemePayer, payment_response_header
from wallets import Signer

__all__ = ["AsyncPaymentTransport", "PaymentPending", "PaymentTransport", "Receipt", "receipt_of"]

RECEIPT_KEY = "x402_receipt"
_RETRY_FLAG = "x402_paid_attempt"
SCHEMES = ("auto", EXACT, BATCH)


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


def _offers(offer: Offer, scheme: str) -> bool:
    return any(req.get("scheme") == scheme for req in offer.accepts)


def _with_payment(request: httpx.Request, body: bytes, payment: SignedPayment) -> httpx.Request:
    headers = request.headers.copy()
    headers[payment.header_name] = payment.header_value
    extensions = {**request.extensions, _RETRY_FLAG: True}
    # type(request): the same class the client uses (httpx, or httpx2 for the openai/anthropic SDKs)
    return type(request)(request.method, request.url, headers=headers, content=body, extensions=extensions)


def _package_of(request: httpx.Request) -> str:
    """The HTTP library the request comes from: ``httpx``, or ``httpx2`` (httpx's successor, which the
    Anthropic and OpenAI SDKs from PyPI run on; its objects have the same API but other classes)."""
    return type(request).__module__.partition(".")[0]


def _default_transport(package: str, kind: str) -> Any:
    """``package``'s own ``HTTPTransport`` or ``AsyncHTTPTransport``: a request must be sent by a transport of
    the library that made it (httpx's transport refuses httpx2's request streams)."""
    return getattr(importlib.import_module(package), kind)()


class _Payer:
    """The transport-independent part: scheme choice, scheme payers, pending payments."""

    def __init__(
        self,
        signer: Signer,
        policy: SpendingPolicy,
        budget: BudgetStore | None,
        channels: ChannelOptions | None,
        scheme: str,
    ) -> None:
        if scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
        self.signer = signer
        self.policy = policy
        self.budget = budget or MemoryBudgetStore()
        self.pending: dict[str, SignedPayment] = {}
        self.payers: dict[str, SchemePayer] = {EXACT: ExactPayer(signer, policy, self.budget)}
        if channels is not None or scheme == BATCH:
            self.payers[BATCH] = ChannelPayer(signer, policy, self.budget, channels)
        # auto: channels (cheaper per request, no gas per call) before exact when enabled
        self.schemes = (scheme,) if scheme != "auto" else tuple(s for s in (BATCH, EXACT) if s in self.payers)

    def channel_of(self, offer: Offer) -> str | None:
        """The channel an offer would be paid from (None: not by channel, or not payable).

        The transports run one paid request per channel at a time: the server refuses a second
        voucher while one is in flight (``…_channel_busy``), and two first requests would both
        sign a deposit.
        """
        payer = self.payers.get(BATCH)
        if not isinstance(payer, ChannelPayer):
            return None
        try:
            choice = choose(offer, self.policy, self.schemes)
        except (PaymentRefused, PaymentOfferError):
            return None  # pay() raises it again, with the lock not held
        return payer.channel_key_of(choice) if choice.scheme == BATCH else None

    def pending_for(self, key: str) -> SignedPayment | None:
        payment = self.pending.get(key)
        if payment is not None and payment.valid_before <= time.time():
            del self.pending[key]  # expired: it can no longer be settled, paying anew is safe
            return None
        return payment

    def pay(self, key: str, offer: Offer, url: str) -> tuple[SignedPayment, str | None]:
        """Choose, check, reserve and sign; raises PaymentRefused before signing anything.

        The payment stays pending for ``key`` until `finish`: if the answer never arrives, a
        retry of the same request re-sends it instead of paying again.
        """
        schemes = self.schemes
        while True:
            choice = choose(offer, self.policy, schemes)
            try:
                payment, reservation = self.payers[choice.scheme].pay(offer, choice, url)
                break
            except (PaymentRefused, ChannelTermsChanged):
                # a channel the policy cannot fund (deposit caps, budget) or whose terms changed
                # while it holds money: pay another way if allowed
                schemes = tuple(s for s in schemes if s != choice.scheme)
                if not schemes or not any(_offers(offer, s) for s in schemes):
                    raise
        self.pending[key] = payment
        return payment, reservation

    def replay_error(self, response: httpx.Response, pending: SignedPayment) -> PaymentPending | None:
        """The error for a re-sent payment the server only calls used, or None to go on."""
        if response.status_code != 402 or payment_response_header(response) is not None:
            return None
        return PaymentPending(
            "a payment for this request was already sent and may have been taken; "
            "the server did not return its response",
            pending.valid_before,
        )

    def recover(self, key: str, response: httpx.Response, payment: SignedPayment, reservation: str | None) -> bool:
        """A 402 to a paid request (body read): True when the scheme resynced and the request
        should be paid once more; the refused attempt is then forgotten and its budget freed."""
        if response.status_code != 402 or not self.payers[payment.scheme].recover(payment, response):
            return False
        self.pending.pop(key, None)
        if reservation is not None:
            self.budget.release(reservation)
        return True

    def finish(self, key: str, response: httpx.Response, payment: SignedPayment, reservation: str | None) -> None:
        """The answer arrived: forget the pending payment, settle the budget, attach the receipt.

        A ``settlement_pending`` receipt means the money may still move: the payment stays
        pending (and its budget spent), so retrying the request re-sends it and gets the answer.
        """
        try:
            receipt, paid = self.payers[payment.scheme].settle(payment, response)
        except BaseException:
            self.pending.pop(key, None)  # the server broke the protocol; its answer is final
            raise
        if receipt is not None and not receipt.success and receipt.error == "settlement_pending":
            response.extensions[RECEIPT_KEY] = receipt
            return
        self.pending.pop(key, None)
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
        transport: the transport to wrap (default: the ``HTTPTransport`` of the library each request
            comes from: httpx's, or httpx2's when this transport serves an ``httpx2.Client``, as the
            Anthropic and OpenAI SDKs from PyPI need: ``anthropic.Anthropic(...,
            http_client=httpx2.Client(transport=PaymentTransport(...)))``).
        channels: enables ``batch-settlement`` payment channels (`ChannelOptions`: store,
            deposit sizing, RPC for recovery); None pays ``exact`` only.
        scheme: ``"auto"`` (channels when enabled and offered, else ``exact``), or force
            ``"exact"`` or ``"batch-settlement"`` (which enables in-memory channels if
            ``channels`` is None).

    Raises:
        ValueError: an unknown ``scheme``.
    """

    def __init__(
        self,
        signer: Signer,
        policy: SpendingPolicy | None = None,
        budget: BudgetStore | None = None,
        transport: httpx.BaseTransport | None = None,
        *,
        channels: ChannelOptions | None = None,
        scheme: str = "auto",
    ) -> None:
        self._payer = _Payer(signer, policy or SpendingPolicy(), budget, channels, scheme)
        self._given = transport
        # the default sender per HTTP library (httpx, httpx2), made on its first request
        self._senders: dict[str, httpx.BaseTransport] = {}
        self._senders_lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}  # one paid request per channel at a time

    def _sender(self, request: httpx.Request) -> httpx.BaseTransport:
        if self._given is not None:
            return self._given
        package = _package_of(request)
        sender = self._senders.get(package)
        if sender is None:
            with self._senders_lock:
                sender = self._senders.setdefault(package, _default_transport(package, "HTTPTransport"))
        return sender

    @property
    def channel_payer(self) -> ChannelPayer | None:
        """The ``batch-settlement`` payer (its channels, its store), or None when channels are off."""
        payer = self._payer.payers.get(BATCH)
        return payer if isinstance(payer, ChannelPayer) else None

    def _replay(self, request: httpx.Request, body: bytes, key: str, pending: SignedPayment) -> httpx.Response | None:
        response = self._sender(request).handle_request(_with_payment(request, body, pending))
        if pending.scheme == BATCH and response.status_code == 402:
            response.read()
            if self._payer.recover(key, response, pending, None):
                response.close()
                return None  # the voucher was used or stale: pay anew from the resynced channel
        if (error := self._payer.replay_error(response, pending)) is not None:
            response.close()
            raise error
        self._payer.finish(key, response, pending, None)
        return response

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        key = _request_key(request, body)
        pending = self._payer.pending_for(key)
        if pending is not None and (replayed := self._replay(request, body, key, pending)) is not None:
            return replayed
        response = self._sender(request).handle_request(request)
        if response.status_code != 402 or request.extensions.get(_RETRY_FLAG):
            return response
        offer = read_offer(response.headers, response.read())
        response.close()
        channel = self._payer.channel_of(offer)
        if channel is None:
            return self._pay(request, body, key, offer)
        with self._locks.setdefault(channel, threading.Lock()):
            return self._pay(request, body, key, offer)

    def _pay(self, request: httpx.Request, body: bytes, key: str, offer: Offer) -> httpx.Response:
        payment, reservation = self._payer.pay(key, offer, str(request.url))
        # A transport error here leaves the outcome unknown: the payment stays pending for this
        # request. The body is not read, so streamed answers stream.
        paid = self._sender(request).handle_request(_with_payment(request, body, payment))
        if payment.scheme == BATCH and paid.status_code == 402:
            paid.read()
            if self._payer.recover(key, paid, payment, reservation):
                paid.close()
                payment, reservation = self._payer.pay(key, offer, str(request.url))
                paid = self._sender(request).handle_request(_with_payment(request, body, payment))
        self._payer.finish(key, paid, payment, reservation)
        return paid

    def close(self) -> None:
        for sender in [self._given] if self._given is not None else list(self._senders.values()):
            sender.close()


class AsyncPaymentTransport(httpx.AsyncBaseTransport):
    """The async twin of `PaymentTransport` (same arguments, same behaviour).

    Channel stores and budget stores are synchronous (a local file or one Redis round trip).
    """

    def __init__(
        self,
        signer: Signer,
        policy: SpendingPolicy | None = None,
        budget: BudgetStore | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        channels: ChannelOptions | None = None,
        scheme: str = "auto",
    ) -> None:
        self._payer = _Payer(signer, policy or SpendingPolicy(), budget, channels, scheme)
        self._given = transport
        self._senders: dict[str, httpx.AsyncBaseTransport] = {}  # per HTTP library, as in PaymentTransport
        self._locks: dict[str, asyncio.Lock] = {}

    def _sender(self, request: httpx.Request) -> httpx.AsyncBaseTransport:
        if self._given is not None:
            return self._given
        package = _package_of(request)
        sender = self._senders.get(package)
        if sender is None:  # one event loop thread: no lock needed
            sender = self._senders[package] = _default_transport(package, "AsyncHTTPTransport")
        return sender

    @property
    def channel_payer(self) -> ChannelPayer | None:
        """The ``batch-settlement`` payer, or None when channels are off."""
        payer = self._payer.payers.get(BATCH)
        return payer if isinstance(payer, ChannelPayer) else None

    async def _replay(
        self, request: httpx.Request, body: bytes, key: str, pending: SignedPayment
    ) -> httpx.Response | None:
        response = await self._sender(request).handle_async_request(_with_payment(request, body, pending))
        if pending.scheme == BATCH and response.status_code == 402:
            await response.aread()
            if self._payer.recover(key, response, pending, None):
                await response.aclose()
                return None
        if (error := self._payer.replay_error(response, pending)) is not None:
            await response.aclose()
            raise error
        self._payer.finish(key, response, pending, None)
        return response

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        key = _request_key(request, body)
        pending = self._payer.pending_for(key)
        if pending is not None and (replayed := await self._replay(request, body, key, pending)) is not None:
            return replayed
        response = await self._sender(request).handle_async_request(request)
        if response.status_code != 402 or request.extensions.get(_RETRY_FLAG):
            return response
        offer = read_offer(response.headers, await response.aread())
        await response.aclose()
        channel = self._payer.channel_of(offer)
        if channel is None:
            return await self._pay(request, body, key, offer)
        async with self._locks.setdefault(channel, asyncio.Lock()):
            return await self._pay(request, body, key, offer)

    async def _pay(self, request: httpx.Request, body: bytes, key: str, offer: Offer) -> httpx.Response:
        payment, reservation = self._payer.pay(key, offer, str(request.url))
        paid = await self._sender(request).handle_async_request(_with_payment(request, body, payment))
        if payment.scheme == BATCH and paid.status_code == 402:
            await paid.aread()
            if self._payer.recover(key, paid, payment, reservation):
                await paid.aclose()
                payment, reservation = self._payer.pay(key, offer, str(request.url))
                paid = await self._sender(request).handle_async_request(_with_payment(request, body, payment))
        self._payer.finish(key, paid, payment, reservation)
        return paid

    async def aclose(self) -> None:
        for sender in [self._given] if self._given is not None else list(self._senders.values()):
            await sender.aclose()
