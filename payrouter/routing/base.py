"""The `Router` seam: what a routing engine decides and how it is asked."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from payrouter.chat import ChatRequest
from payrouter.routing.constraints import RouteConstraints
from pricing import PriceTable

__all__ = [
    "DEFAULT_OUTPUT_BUDGET",
    "Candidate",
    "RouteDecision",
    "Router",
    "RouterState",
    "RoutingError",
]

# Output budget when the caller sets no max_tokens. A quote is a maximum, so an unbounded
# budget would price every call at the model's full output limit.
DEFAULT_OUTPUT_BUDGET = 1024


class RoutingError(ValueError):
    """No route satisfies the request (unknown model, or constraints that cannot be met)."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """One model considered for a route.

    Attributes:
        model: catalog id.
        quality: predicted quality in basis points (0..10000: 8250 = 82.5% likely correct).
        price: what this route would be quoted, in atomic units.
        latency_ms: predicted time to the whole answer.
        output_tokens: the output budget it would get.
    """

    model: str
    quality: int
    price: int
    latency_ms: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """Where a request goes.

    Attributes:
        model: catalog id of the model to call first.
        output_tokens: the output budget bought (passed upstream as ``max_tokens``).
        input_tokens: estimated prompt tokens the quote is priced on.
        fallbacks: catalog ids to try, in order, if ``model`` fails.
        reason: a short human explanation of the choice.
        strategy: the strategy applied (``named`` for a model named by the caller).
        candidates: every model considered, best first, with its predictions.
        rule: the name of the operator rule that matched ("" when none did).
        arm: ``"control"`` or ``"trial"`` when the rule splits traffic, else "".
    """

    model: str
    output_tokens: int
    input_tokens: int
    fallbacks: tuple[str, ...] = ()
    reason: str = ""
    strategy: str = "named"
    candidates: tuple[Candidate, ...] = ()
    rule: str = ""
    arm: str = ""


class Router(Protocol):
    """Decides a route. Must be deterministic: same request and state, same decision."""

    def decide(
        self, request: ChatRequest, input_tokens: int, table: PriceTable, constraints: RouteConstraints | None = None
    ) -> RouteDecision:
        """Route ``request`` (whose prompt is estimated at ``input_tokens``) under ``constraints``.

        Raises:
            RoutingError: no model can serve the request; the message names the constraint.
        """
        ...


@runtime_checkable
class RouterState(Protocol):
    """A router whose decisions can be reused: what, besides the request and the table, they
    depend on."""

    def routing_state(self, table: PriceTable) -> Hashable:
        """A value that changes whenever the same request under ``table`` could be routed
        differently (a model turning unhealthy or healthy again); equal values mean `decide`
        gives every request the decision it gave before."""
        ...
