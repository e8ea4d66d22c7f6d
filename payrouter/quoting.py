"""From a chat request to a priced route and its x402 requirements (sealed into the offer by
`payrouter.quote_seal`)."""

from __future__ import annotations

import json
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from pydantic_core import to_json

from payrouter.chat import ChatRequest
from payrouter.routing import RouteConstraints, RouteDecision, Router, RouterState
from payrouter.x402.requirements import Requirements
from pricing import PriceTable, Quote, estimate_chat_input_tokens, quote_route

__all__ = ["MEMO_SIZE", "PricedRoute", "Quoter"]

# routes kept for requests seen again (a few KB each)
MEMO_SIZE = 1024


@dataclass(frozen=True, slots=True)
class PricedRoute:
    """A routed, priced request: what the 402 offers and what a paid call will run."""

    decision: RouteDecision
    quote: Quote
    requirements: Requirements

    def to_record(self) -> bytes:
        """Serialise for the payment journal (what a payment bought; `from_record` reads it back)."""
        d = self.decision
        return to_json(
            {
                "requirements": self.requirements.to_v2(),
                "decision": {
                    "model": d.model,
                    "output_tokens": d.output_tokens,
                    "input_tokens": d.input_tokens,
                    "fallbacks": list(d.fallbacks),
                    "reason": d.reason,
                    "strategy": d.strategy,
                },
                "quote": {"upstream_cost": self.quote.upstream_cost, "amount": self.quote.amount},
            }
        )

    @classmethod
    def from_record(cls, data: bytes) -> PricedRoute:
        """Inverse of `to_record`."""
        obj = json.loads(data)
        d = obj["decision"]
        decision = RouteDecision(
            model=d["model"],
            output_tokens=d["output_tokens"],
            input_tokens=d["input_tokens"],
            fallbacks=tuple(d["fallbacks"]),
            reason=d["reason"],
            strategy=d.get("strategy", "named"),
        )
        quote = Quote(
            model_id=decision.model,
            input_tokens=decision.input_tokens,
            output_tokens=decision.output_tokens,
            upstream_cost=obj["quote"]["upstream_cost"],
            amount=obj["quote"]["amount"],
        )
        return cls(decision=decision, quote=quote, requirements=Requirements.from_v2(obj["requirements"]))


class Quoter:
    """Routes and prices requests against one price table.

    Raises (from `price`):
        RoutingError: no model fits the request.
        PricingError: the route cannot be priced (e.g. does not fit the context window).
    """

    def __init__(self, table: PriceTable, router: Router) -> None:
        self.table = table
        self.router = router
        # request digest -> (router state, route); insertion-ordered, the oldest goes first
        self._memo: dict[str, tuple[Hashable, PricedRoute]] = {}
        self._state = router.routing_state if isinstance(router, RouterState) else None

    def price(
        self, request: ChatRequest, constraints: RouteConstraints | None = None, digest: str | None = None
    ) -> PricedRoute:
        """Route and price ``request``; build the exact requirements a paid call must meet.

        ``digest`` (`payrouter.chat.request_digest`: the body and routing headers, hence the
        constraints) lets a request seen again reuse its route while the router's state (model
        health) is unchanged: routing is deterministic, so the answer is the same, and a client
        repeating an unpaid request (or a flood of one body) costs no routing.
        """
        state = self._state(self.table) if digest is not None and self._state is not None else None
        if state is not None and digest is not None:
            hit = self._memo.get(digest)
            if hit is not None and hit[0] == state:
                return hit[1]
        # what the token estimate reads of each message (a model_dump costs more than the route)
        messages = [{"content": m.content, "name": m.name, "tool_calls": m.tool_calls} for m in request.messages]
        input_tokens = estimate_chat_input_tokens(messages, request.tools)
        decision = self.router.decide(request, input_tokens, self.table, constraints)
        quote = quote_route(self.table, decision.model, decision.input_tokens, decision.output_tokens)
        priced = PricedRoute(decision=decision, quote=quote, requirements=self.requirements(decision, quote))
        if state is not None and digest is not None:
            memo = self._memo
            memo.pop(digest, None)
            if len(memo) >= MEMO_SIZE:
                del memo[next(iter(memo))]
            memo[digest] = (state, priced)
        return priced

    def requirements(self, decision: RouteDecision, quote: Quote) -> Requirements:
        """The x402 requirements of a priced decision under this table (deterministic: a sealed
        quote's offer is rebuilt with it).

        Raises:
            UnknownModelError: the decision's model is not in the table.
        """
        table = self.table
        model = table.model(decision.model)
        extra: dict[str, Any] = {
            "name": table.asset.name,
            "version": table.asset.version,
            # Everything needed to recompute the amount: amount = max(ceil(cost x (1 + markup)
            # + requestFee), ceil(minCharge), 1), cost from the tokens and per-million prices.
            "route": {
                "model": decision.model,
                "reason": decision.reason,
                "inputTokens": decision.input_tokens,
                "maxOutputTokens": decision.output_tokens,
                "fallbacks": list(decision.fallbacks),
                "strategy": decision.strategy,
                "candidates": [
                    {"model": c.model, "quality": c.quality, "price": str(c.price)} for c in decision.candidates[:4]
                ],
            },
            "price": {
                "amount": str(quote.amount),
                "decimals": table.asset.decimals,
                "inputPerMTokUsd": str(model.input_per_mtok),
                "outputPerMTokUsd": str(model.output_per_mtok),
                "markup": str(model.markup),
                "requestFeeUsd": str(model.request_fee),
                "minChargeUsd": str(model.min_charge),
            },
        }
        return Requirements(
            network=table.network,
            amount=quote.amount,
            asset=table.asset.address,
            pay_to=table.pay_to,
            max_timeout_seconds=table.max_timeout_seconds,
            extra=extra,
        )
