"""What the payment gate hands the paid handler, and what the handler reports back."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope

from payrouter.chat import ChatRequest, parse_chat_request, parse_messages_request, request_digest
from payrouter.quoting import PricedRoute
from payrouter.routing import RouteConstraints
from payrouter.routing.constraints import ROUTING_HEADERS
from payrouter.services import Services
from payrouter.x402.asgi import Endpoint
from payrouter.x402.requirements import Resource
from pricing import Charge, PriceTable, PricingError, charge_for_usage

__all__ = ["SCOPE_KEY", "PaidCall", "PaidRequest", "paid_call", "resource_url"]

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


class PaidRequest:
    """One request to a paid endpoint as the gate has read it: its body, and, parsed from it on
    first use, the request, its route constraints, digest and resource.

    Parsing waits for the first reader so that a scheme can start its store round trip on
    the payment alone and validate the request while it runs (`payrouter.x402.schemes.batch`).
    A reader of a malformed request gets `payrouter.chat.InvalidRequest` or
    `payrouter.routing.ConstraintError`, which the gate answers with a 400.

    ``app`` is the rest of the ASGI stack behind the gate; ``endpoint``, when the gate knows
    it, the path's own endpoint, which `payrouter.x402.asgi.run_handler` calls directly.
    """

    def __init__(
        self,
        app: ASGIApp,
        scope: Scope,
        receive: Receive,
        services: Services,
        body: bytes,
        headers: Headers,
        endpoint: Endpoint | None = None,
    ) -> None:
        self.app = app
        self.scope = scope
        self.receive = receive
        self.services = services
        self.body = body
        self.endpoint = endpoint
        self._headers = headers

    @cached_property
    def _parsed(self) -> tuple[ChatRequest, Any]:
        parse = parse_messages_request if self.scope["path"] == "/v1/messages" else parse_chat_request
        return parse(self.body)

    @property
    def request(self) -> ChatRequest:
        """The parsed request.

        Raises:
            InvalidRequest: the body is not a valid request.
        """
        return self._parsed[0]

    @cached_property
    def _routing_headers(self) -> dict[str, str]:
        headers = self._headers
        return {h: headers[h] for h in ROUTING_HEADERS if h in headers}

    @cached_property
    def constraints(self) -> RouteConstraints:
        """The request's routing constraints (its ``routing`` object and headers).

        Raises:
            InvalidRequest, ConstraintError: the request or its constraints are invalid.
        """
        return RouteConstraints.parse(self.request.routing, self._routing_headers)

    @cached_property
    def digest(self) -> str:
        """What a quote for this request is issued for (`payrouter.chat.request_digest`).

        Raises:
            InvalidRequest: the body is not a valid request.
        """
        return request_digest("POST", self.scope["path"], self._parsed[1], self._routing_headers)

    @cached_property
    def resource(self) -> Resource:
        """The paid URL, as offers name it."""
        return Resource(url=resource_url(self.scope, self._headers, self.services.public_url))

    @property
    def parsed(self) -> bool:
        """The request has been parsed (successfully)."""
        return "_parsed" in self.__dict__


def resource_url(scope: Scope, headers: Headers, public_url: str | None) -> str:
    """The URL of the requested path: under ``public_url`` when set, else as the request named it."""
    path: str = scope["path"]
    if public_url:
        return public_url.rstrip("/") + path
    host = headers.get("host") or "localhost"
    return f"{scope.get('scheme', 'http')}://{host}{path}"


def paid_call(scope: Scope) -> PaidCall:
    """The `PaidCall` the gate attached to ``scope``."""
    call = scope.get(SCOPE_KEY)
    assert isinstance(call, PaidCall), "paid_call() called outside the payment gate"
    return call
