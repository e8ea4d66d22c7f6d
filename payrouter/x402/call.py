"""What the payment gate hands the paid handler, and what the handler reports back."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.types import Receive, Scope

from payrouter.chat import ChatRequest
from payrouter.quoting import PricedRoute
from payrouter.routing import RouteConstraints
from payrouter.services import Services
from payrouter.x402.requirements import Resource

__all__ = ["SCOPE_KEY", "PaidCall", "PaidRequest", "paid_call"]

SCOPE_KEY = "payrouter.paid_call"


@dataclass(slots=True)
class PaidCall:
    """One paid request, shared by the gate and the handler through the ASGI scope.

    The gate fills the first four; the handler reports the rest as it serves.

    Attributes:
        request: the parsed request.
        route: the priced route the payment bought.
        payer: the verified payer.
        deadline: unix time by which the payment must be settled (the model call must leave
            room for it).
        answered_by: the catalog model that produced the answer.
        input_tokens, output_tokens: what the upstream reported.
        content: a stream produced content (tokens or tool calls).
        completed: a stream reached its end.
        failed: the model failed mid-stream.
    """

    request: ChatRequest
    route: PricedRoute
    payer: str
    deadline: int
    answered_by: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    content: bool = False
    completed: bool = False
    failed: bool = False

    @property
    def billable(self) -> bool:
        """A stream produced content and did not fail (a client hang-up still counts)."""
        return (self.content or self.completed) and not self.failed


@dataclass(frozen=True, slots=True)
class PaidRequest:
    """One request to a paid endpoint as the gate has read it (body, digest, route constraints)."""

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
