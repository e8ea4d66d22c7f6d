"""What a caller may demand of a route: price cap, model lists, privacy tier, strategy."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast, get_args

from pricing import Privacy, Strategy

__all__ = ["ROUTING_HEADERS", "ConstraintError", "RouteConstraints"]

# Request headers that constrain routing (they take part in the quote digest, since they
# change what is bought).
ROUTING_HEADERS = ("x-payrouter-max-price", "x-payrouter-only", "x-payrouter-ignore", "x-payrouter-privacy")
_PRIVACY: tuple[str, ...] = get_args(Privacy)
_STRATEGIES: tuple[str, ...] = get_args(Strategy)


class ConstraintError(ValueError):
    """A routing constraint in the request is malformed."""


def _names(value: Any, where: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConstraintError(f"{where} must be a list of model ids")
    return frozenset(value)


@dataclass(frozen=True, slots=True)
class RouteConstraints:
    """Caller constraints, from the body's ``routing`` object and ``X-Payrouter-*`` headers.

    Attributes:
        max_price: the most the caller will pay for this call, in atomic units.
        only: route only to these catalog ids (empty: any).
        ignore: never route to these.
        privacy: the least private tier allowed (``local`` < ``trusted`` < ``public``).
        strategy: overrides the table's strategy for ``auto`` (``auto:<strategy>`` does too).
    """

    max_price: int | None = None
    only: frozenset[str] = field(default_factory=frozenset)
    ignore: frozenset[str] = field(default_factory=frozenset)
    privacy: Privacy | None = None
    strategy: Strategy | None = None

    @classmethod
    def parse(cls, body: Mapping[str, Any] | None, headers: Mapping[str, str] | None = None) -> RouteConstraints:
        """Merge the body's ``routing`` object with the headers (a header wins).

        Raises:
            ConstraintError: a value is malformed (naming it).
        """
        body = dict(body or {})
        headers = headers or {}
        unknown = set(body) - {"max_price", "only", "ignore", "privacy", "strategy"}
        if unknown:
            raise ConstraintError(f"routing: unknown fields {sorted(unknown)}")
        raw_price = headers.get("x-payrouter-max-price", body.get("max_price"))
        max_price = None
        if raw_price is not None:
            text = str(raw_price)
            if isinstance(raw_price, bool) or not text.isdigit():
                raise ConstraintError("max_price must be a whole number of atomic units")
            max_price = int(text)
        privacy = headers.get("x-payrouter-privacy", body.get("privacy"))
        if privacy is not None and privacy not in _PRIVACY:
            raise ConstraintError(f"privacy must be one of {list(_PRIVACY)}")
        strategy = body.get("strategy")
        if strategy is not None and strategy not in _STRATEGIES:
            raise ConstraintError(f"strategy must be one of {list(_STRATEGIES)}")
        return cls(
            max_price=max_price,
            only=_names(headers.get("x-payrouter-only", body.get("only")), "only"),
            ignore=_names(headers.get("x-payrouter-ignore", body.get("ignore")), "ignore"),
            privacy=cast(Privacy | None, privacy),
            strategy=cast(Strategy | None, strategy),
        )
