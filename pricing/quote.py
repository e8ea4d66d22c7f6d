"""Quote and charge arithmetic: route -> amount in atomic units of the asset.

The exact upstream cost of a route is a rational number of atomic units. The price is

    amount = max(ceil(cost * (1 + markup) + request_fee), ceil(min_charge), 1)

computed in `Fraction`s and rounded up once, so an amount is never below the upstream cost
(``ceil(cost)``), never a unit more than the formula, and never zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from functools import lru_cache

from pricing.errors import RouteDoesNotFitError
from pricing.money import MAX_DECIMAL_PLACES
from pricing.table import ModelPrice, PriceTable

__all__ = ["Charge", "Quote", "charge_for_usage", "quote_route"]

_PER_MILLION = 1_000_000


@dataclass(frozen=True, slots=True)
class Quote:
    """The price of one route, all amounts in atomic units of the table's asset.

    Attributes:
        model_id: the routed model.
        input_tokens: estimated prompt tokens priced.
        output_tokens: output budget priced (the most the call may produce).
        upstream_cost: what the provider charges for those tokens, rounded up.
        amount: what the client pays; ``amount - upstream_cost`` is the operator's margin.
    """

    model_id: str
    input_tokens: int
    output_tokens: int
    upstream_cost: int
    amount: int

    @property
    def margin(self) -> int:
        """Operator's gross margin in atomic units."""
        return self.amount - self.upstream_cost


@dataclass(frozen=True, slots=True)
class Charge:
    """What a finished call used and costs, in atomic units.

    Attributes:
        amount: the price of the tokens actually used, capped at the quote.
        upstream_cost: the provider's cost for those tokens, rounded up.
        capped: True when usage priced above the quote and the quote's amount was kept.
    """

    amount: int
    upstream_cost: int
    capped: bool


# Prices have at most 18 decimal places (enforced when the table loads), so scaled by 10**18
# every rate is an exact integer and a quote is integer arithmetic: the same exact rationals as
# Fractions (the tests check it against them), at a tenth of the cost on the hot path.
_SCALE = 10**MAX_DECIMAL_PLACES


@lru_cache(maxsize=1024)
def _rates(
    input_per_mtok: Decimal, output_per_mtok: Decimal, markup: Decimal, fee: Decimal, minimum: Decimal, decimals: int
) -> tuple[int, int, int, int, int]:
    """(input rate, output rate, markup, fee, minimum), each x 10**18 as exact integers."""

    def scaled(value: Decimal, atomic: bool) -> int:
        factor: int = _SCALE * (10**decimals if atomic else 1)
        exact = Fraction(value) * factor
        assert exact.denominator == 1, "prices are validated to at most 18 decimal places"
        numerator: int = exact.numerator
        return numerator

    return (
        scaled(input_per_mtok, True),
        scaled(output_per_mtok, True),
        scaled(markup, False),
        scaled(fee, True),
        scaled(minimum, True),
    )


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def _cost_and_price(model: ModelPrice, decimals: int, input_tokens: int, output_tokens: int) -> tuple[int, int]:
    """(upstream cost rounded up, price rounded up once), in atomic units."""
    in_rate, out_rate, markup, fee, minimum = _rates(
        model.input_per_mtok, model.output_per_mtok, model.markup, model.request_fee, model.min_charge, decimals
    )
    # cost = tokens x rate / (10**6 x S); price = cost x (S + markup) / S + fee / S
    cost_num = input_tokens * in_rate + output_tokens * out_rate
    cost_den = _PER_MILLION * _SCALE
    price = _ceil_div(cost_num * (_SCALE + markup) + fee * _PER_MILLION * _SCALE, cost_den * _SCALE)
    return _ceil_div(cost_num, cost_den), max(price, _ceil_div(minimum, _SCALE), 1)


def _check_tokens(input_tokens: int, output_tokens: int) -> None:
    for name, value in (("input_tokens", input_tokens), ("output_tokens", output_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer")


def quote_route(table: PriceTable, model_id: str, input_tokens: int, output_tokens: int) -> Quote:
    """Price a route: ``input_tokens`` in and up to ``output_tokens`` out on ``model_id``.

    Raises:
        UnknownModelError: ``model_id`` is not in the table.
        RouteDoesNotFitError: the output budget exceeds the model's ``max_output_tokens``, or
            input plus output exceed its ``context_window``.
        ValueError: a token count is negative or not an integer.
    """
    _check_tokens(input_tokens, output_tokens)
    model = table.model(model_id)
    if output_tokens > model.max_output_tokens:
        raise RouteDoesNotFitError(
            f"output budget {output_tokens} exceeds {model_id}'s max_output_tokens {model.max_output_tokens}"
        )
    if input_tokens + output_tokens > model.context_window:
        raise RouteDoesNotFitError(
            f"{input_tokens} input + {output_tokens} output tokens exceed {model_id}'s "
            f"context window of {model.context_window}"
        )
    upstream_cost, amount = _cost_and_price(model, table.asset.decimals, input_tokens, output_tokens)
    return Quote(
        model_id=model_id,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        upstream_cost=upstream_cost,
        amount=amount,
    )


def charge_for_usage(
    table: PriceTable, model_id: str, input_tokens: int, output_tokens: int, cap: int | None = None
) -> Charge:
    """Price the tokens a call actually used, with the same formula as `quote_route`.

    Args:
        cap: the quoted amount; the charge never exceeds it (the client agreed to no more).

    Raises:
        UnknownModelError: ``model_id`` is not in the table.
        ValueError: a token count is negative, or ``cap`` is negative.
    """
    _check_tokens(input_tokens, output_tokens)
    if cap is not None and cap < 0:
        raise ValueError("cap must be non-negative")
    model = table.model(model_id)
    upstream_cost, amount = _cost_and_price(model, table.asset.decimals, input_tokens, output_tokens)
    capped = cap is not None and amount > cap
    return Charge(amount=cap if capped and cap is not None else amount, upstream_cost=upstream_cost, capped=capped)
