"""Routing: which model answers a request, with what output budget, and what to fall back to."""

from payrouter.routing.base import Candidate, RouteDecision, Router, RouterState, RoutingError
from payrouter.routing.constraints import ConstraintError, RouteConstraints
from payrouter.routing.engine import RoutingEngine

__all__ = [
    "Candidate",
    "ConstraintError",
    "RouteConstraints",
    "RouteDecision",
    "Router",
    "RouterState",
    "RoutingEngine",
    "RoutingError",
]
