"""The seam between the payment gate and a payment scheme.

The gate owns the handshake every scheme shares: read and route the request, quote it,
answer 402 with every offered scheme, decode the envelope, pick the scheme it names, and turn
a rejection into a fresh offer. A `Scheme` owns the rest: its payload, its checks, how it
reserves the payment, runs the paid handler, charges or releases, and writes the receipt.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from starlette.types import Send

from payrouter.quoting import PricedRoute
from payrouter.x402.call import PaidRequest
from payrouter.x402.errors import PaymentRejected, Reason
from payrouter.x402.requirements import Requirements
from payrouter.x402.wire import Envelope, v1_network_name

__all__ = ["Refunds", "Scheme", "match_terms", "presented_quote"]


class Scheme(Protocol):
    """One x402 payment scheme the gate can offer and accept."""

    @property
    def name(self) -> str:
        """The x402 scheme name (``accepted.scheme``)."""
        ...

    def offer(self, priced: PricedRoute) -> Requirements:
        """This scheme's payment requirements for a priced route (deterministic: a paid retry
        is matched against the same offer rebuilt from the stored quote)."""
        ...

    async def serve(self, call: PaidRequest, envelope: Envelope, send: Send) -> None:
        """Serve a request paid under this scheme, answer it (with a receipt) on ``send``.

        Raises:
            PaymentRejected: the payment cannot be accepted; nothing was charged and the
                handler did not run (the gate answers 402 with a fresh offer).
        """
        ...


@runtime_checkable
class Refunds(Protocol):
    """A scheme that holds the payer's money between calls and gives back what is unspent
    (x402 ``batch-settlement``: a ``GET`` of a paid URL is the refund handshake)."""

    def refund_offer(self) -> Requirements:
        """The requirements a refund probe is answered with."""
        ...

    async def refund(self, envelope: Envelope, send: Send) -> None:
        """Carry out the refund ``envelope`` asks for; answer with its receipt on ``send``.

        Raises:
            PaymentRejected: the refund cannot be made; nothing moved.
        """
        ...


async def presented_quote(call: PaidRequest, envelope: Envelope) -> PricedRoute | None:
    """The quote a paid request presents: the sealed one its ``accepted.extra.quote`` carries
    (`payrouter.quote_seal`), or, without a token (x402 v1, or a client that rebuilt
    ``accepted``), the request priced afresh, which the payment must then match. None when the
    token is not a live quote of ours for this request (expired, tampered, another request's).

    Raises:
        RoutingError, PricingError: a tokenless request cannot be priced now.
        StoreError: the token's key could not be read.
    """
    services = call.services
    accepted = envelope.accepted or {}
    extra = accepted.get("extra")
    token = extra.get("quote") if isinstance(extra, dict) else None
    if token is None:
        return services.quoter.price(call.request, call.constraints, call.digest)
    return await services.quotes.open(token, call.digest, services.quoter)


def match_terms(envelope: Envelope, offer: Requirements, payer: str | None) -> None:
    """Check the terms every scheme shares: ``accepted`` echoes exactly ``offer``'s scheme,
    network, asset, payTo, amount and timeout (v1: the network name).

    Raises:
        PaymentRejected: with the reason of the first field that differs.
    """
    expected_network = offer.network if envelope.version == 2 else v1_network_name(offer.chain_id)
    if envelope.network != expected_network:
        raise PaymentRejected(
            Reason.INVALID_NETWORK, f"network {envelope.network!r} is not the quoted {expected_network!r}", payer
        )
    accepted = envelope.accepted
    if accepted is None:
        return
    if str(accepted.get("asset", "")).lower() != offer.asset.lower():
        raise PaymentRejected(Reason.INVALID_REQUIREMENTS, "accepted.asset is not the quoted asset", payer)
    if str(accepted.get("payTo", "")).lower() != offer.pay_to.lower():
        raise PaymentRejected(Reason.INVALID_REQUIREMENTS, "accepted.payTo is not the quoted payTo", payer)
    if accepted.get("amount") != str(offer.amount):
        reason = Reason.VALUE_MISMATCH if offer.scheme == "exact" else Reason.INVALID_REQUIREMENTS
        raise PaymentRejected(
            reason, f"accepted.amount {accepted.get('amount')!r} is not the quoted {offer.amount}", payer
        )
    if accepted.get("maxTimeoutSeconds") != offer.max_timeout_seconds:
        raise PaymentRejected(Reason.INVALID_REQUIREMENTS, "accepted.maxTimeoutSeconds differs from the quote", payer)
