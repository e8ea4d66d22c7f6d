"""Routing: which model answers a request, with what output budget, and what to fall back to."""

from payrouter.routing.base import DefaultModelRouter, RouteDecision, Router, RoutingError

__all__ = ["DefaultModelRouter", "RouteDecision", "Router", "RoutingError"]
