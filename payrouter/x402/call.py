"""What the payment gate hands the paid handler, and what the handler reports back."""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.types import ASGIApp, Receive, Scope

from payrouter.chat import ChatRequest
from payrouter.quoting import PricedRoute
from payrouter.routing import RouteConstraints
from payrouter.services import Services
from payrouter.x402.requirements import Resource
from pricing import Charge, PriceTable, PricingError, charge_for_usage

__all__ = ["SCOPE_KEY", "PaidCall", "PaidRequest", "paid_call"]

SCOPE_KEY = "payrouter.paid_call"


@dataclass(slots=True)
class PaidCall:
    """One paid request, shared by the gate and the handler through the ASGI scope.

    The gate fills the first five; the handler reports the rest as it serves.

    Attributes:
        request: the parsed request.
        route: the priced route the payment bought.
        payer: the verified payer.
        deadline: unix time by which the payment must be settled (the model call must leave
            room for it).
        usage_priced: the scheme charges the price of the tokens used (never more than the
            quote) instead of the quote.
        answered_by: the catalog model that produced the answer.
        usage_known: the upstream reported its token usage (``input_tokens``/``output_tokens``).
        input_tokens, output_tokens: what the upstream reported.
        content: a stream produced content (tokens or tool calls).
        completed: a stream reached its end.
        failed: the model failed mid-stream.
    """

    request: ChatRequest
    route: PricedRoute
    payer: str
    deadline: int
    usage_priced: bool = False
    answered_by: str = ""
    usage_known: bool = False
    input_tokens: int = 0
    output_tokens: int = 0
    content: bool = False
    completed: bool = False
    failed: bool = False
    # the last usage pricing, by what it priced: the receipt, the usage report, the route
    # headers and the journal record all ask for it
    _priced: tuple[PriceTable, str, int, int, Charge | None] | None = field(default=None, repr=False, compare=False)

    @property
    def quoted(self) -> int:
        """The most this call may charge: the quote the payment covers."""
        return self.route.requirements.amount

    def usage_price(self, table: PriceTable) -> int:
        """The price of the tokens the upstream reported, capped at the quote.

        With no usage reported (a stream cut before its usage chunk) the tokens cannot be
        priced: the quote is the price.
        """
        priced = self.usage_charge(table)
        return self.quoted if priced is None else priced.amount

    def usage_charge(self, table: PriceTable) -> Charge | None:
        """The tokens the upstream reported, priced under ``table`` and capped at the quote
        (`pricing.charge_for_usage`); None when there is no usage to price or the answering
        model cannot be priced."""
        if not self.answered_by or not self.usage_known:
            return None
        last = self._priced
        if (
            last is not None
            and last[0] is table
            and last[1:4] == (self.answered_by, self.input_tokens, self.output_tokens)
        ):
            return last[4]
        try:
            priced: Charge | None = charge_for_usage(
                table, self.answered_by, self.input_tokens, self.output_tokens, cap=self.quoted
            )
        except PricingError:
            priced = None
        self._priced = (table, self.answered_by, self.input_tokens, self.output_tokens, priced)
        return priced

    def charge(self, table: PriceTable) -> int:
        """What this call charges once answered: the quote, or for a usage-priced scheme the
        price of the tokens used."""
        return self.usage_price(table) if self.usage_priced else self.quoted

    @property
    def billable(self) -> bool:
        """A stream produced content and did not fail (a client hang-up still counts)."""
        return (self.content or self.completed) and not self.failed


@dataclass(frozen=True, slots=True)
class PaidRequest:
    """One request to a paid endpoint as the gate has read it (body, digest, route constraints).

    ``app`` is the paid handler behind the gate.
    """

    app: ASGIApp
    scope: Scope
    receive: Receive
    services: Services
    request: ChatRequest
    body: bytes
    digest: str
    resource: Resource
    constraints: RouteConstraints


def paid_call(scope: Scope) -> PaidCall:
    """The `PaidCall` the gate attached to ``scope``."""
    call = scope.get(SCOPE_KEY)
    assert isinstance(call, PaidCall), "paid_call() called outside the payment gate"
    return call
