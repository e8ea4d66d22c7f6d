"""Errors raised by `pricing`.

Hierarchy::

    PricingError (ValueError)
      PriceTableError      a price table that fails to load; lists every bad field
      UnknownModelError    a model id that is not in the table
      RouteDoesNotFitError a request too large for the model's context or output limit
"""

from __future__ import annotations

__all__ = ["PriceTableError", "PricingError", "RouteDoesNotFitError", "UnknownModelError"]


class PricingError(ValueError):
    """Base class of every error raised by `pricing`."""


class PriceTableError(PricingError):
    """A price table is invalid.

    Attributes:
        source: where the table came from (a path, or ``"<data>"``).
        problems: ``(field, message)`` pairs, the field as a dotted path like ``models[2].markup``.
    """

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {field}: {message}" for field, message in problems)
        super().__init__(f"invalid price table {source}:\n{lines}")


class UnknownModelError(PricingError):
    """The requested model id is not in the price table."""

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        super().__init__(f"unknown model {model_id!r}")


class RouteDoesNotFitError(PricingError):
    """Input plus output budget exceed the model's context window or output limit."""
