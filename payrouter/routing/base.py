"""The `Router` seam and the simplest router: a named model, or the table's default."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from payrouter.chat import ChatRequest
from payrouter.routing.constraints import RouteConstraints
from pricing import PriceTable, UnknownModelError

__all__ = [
    "DEFAULT_OUTPUT_BUDGET",
    "Candidate",
    "DefaultModelRouter",
    "RouteDecision",
    "Router",
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
    """

    model: str
    output_tokens: int
    input_tokens: int
    fallbacks: tuple[str, ...] = ()
    reason: str = ""
    strategy: str = "named"
    candidates: tuple[Candidate, ...] = ()


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


class DefaultModelRouter:
    """Routes a named model to itself and ``auto`` to the price table's ``default_model``."""

    def decide(
        self, request: ChatRequest, input_tokens: int, table: PriceTable, constraints: RouteConstraints | None = None
    ) -> RouteDecision:
        auto = request.model == "auto" or request.model.startswith("auto:")
        model_id = table.default_model if auto else request.model
        try:
            model = table.model(model_id)
        except UnknownModelError:
            raise RoutingError(f"unknown model {model_id!r}; GET /v1/models lists the catalog") from None
        room = model.context_window - input_tokens
        if room < 1:
            raise RoutingError(
                f"the prompt (~{input_tokens} tokens) does not fit {model_id}'s context window of {model.context_window}"
            )
        limit = request.output_limit
        if limit is not None:
            if limit > model.max_output_tokens:
                raise RoutingError(f"max_tokens {limit} exceeds {model_id}'s output limit of {model.max_output_tokens}")
            if limit > room:
                raise RoutingError(
                    f"~{input_tokens} prompt + {limit} output tokens exceed {model_id}'s context window "
                    f"of {model.context_window}"
                )
            budget = limit
        else:
            budget = min(DEFAULT_OUTPUT_BUDGET, model.max_output_tokens, room)
        reason = "default model for auto" if auto else "model named by the caller"
        return RouteDecision(model=model_id, output_tokens=budget, input_tokens=input_tokens, reason=reason)
