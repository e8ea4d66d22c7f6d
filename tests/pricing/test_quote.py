"""Quote arithmetic: exact, rounded up once, never below cost, monotonic in tokens."""

from __future__ import annotations

import copy
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pricing import (
    PriceTable,
    RouteDoesNotFitError,
    UnknownModelError,
    charge_for_usage,
    parse_price_table,
    quote_route,
)

from .test_table import VALID

# Decimal strings with up to 9 fractional digits, as an operator would write them.
price = st.builds(
    lambda whole, digits: f"{whole}.{digits}",
    st.integers(min_value=0, max_value=200),
    st.text(alphabet="0123456789", min_size=1, max_size=9),
)
tokens = st.integers(min_value=0, max_value=1_000_000)


def _table(
    input_price: str,
    output_price: str,
    markup: str = "0",
    fee: str = "0",
    minimum: str = "0",
    decimals: int = 6,
) -> PriceTable:
    data: dict[str, Any] = copy.deepcopy(VALID)
    data["asset"]["decimals"] = decimals
    data["models"][0].update(
        input_per_mtok=input_price,
        output_per_mtok=output_price,
        markup=markup,
        request_fee=fee,
        min_charge=minimum,
        context_window=10_000_000,
        max_output_tokens=2_000_000,
    )
    return parse_price_table(data)


def _exact(table: PriceTable, i: int, o: int) -> tuple[Fraction, Fraction]:
    """Reference arithmetic, written independently of pricing.quote: (cost, price) in atomic units."""
    m = table.models[0]
    unit = 10**table.asset.decimals
    cost = (Fraction(str(m.input_per_mtok)) * i + Fraction(str(m.output_per_mtok)) * o) * unit / 10**6
    marked = cost * (1 + Fraction(str(m.markup))) + Fraction(str(m.request_fee)) * unit
    return cost, max(marked, Fraction(str(m.min_charge)) * unit, Fraction(1))


@settings(max_examples=300, deadline=None)
@given(price, price, price, price, price, tokens, tokens, st.sampled_from([0, 2, 6, 18]))
def test_amount_is_the_exact_price_rounded_up(
    ip: str, op: str, markup: str, fee: str, minimum: str, i: int, o: int, decimals: int
) -> None:
    assume(Decimal(markup) <= 100)
    table = _table(ip, op, markup, fee, minimum, decimals)
    quote = quote_route(table, "small", i, o)
    cost, exact_price = _exact(table, i, o)
    assert isinstance(quote.amount, int) and isinstance(quote.upstream_cost, int)
    # smallest integer >= the exact price: exact rounding, up, once
    assert quote.amount - 1 < exact_price <= quote.amount
    assert quote.upstream_cost - 1 < cost <= quote.upstream_cost
    # never below cost
    assert quote.amount >= quote.upstream_cost and quote.margin >= 0
    assert quote.amount >= 1


@settings(max_examples=200, deadline=None)
@given(price, price, price, price, tokens, tokens, st.integers(0, 5000), st.integers(0, 5000))
def test_monotonic_in_tokens(ip: str, op: str, markup: str, fee: str, i: int, o: int, di: int, do: int) -> None:
    assume(Decimal(markup) <= 100)
    table = _table(ip, op, markup, fee)
    base = quote_route(table, "small", i, o).amount
    assert quote_route(table, "small", i + di, o).amount >= base
    assert quote_route(table, "small", i, o + do).amount >= base
    assert quote_route(table, "small", i + di, o + do).amount >= base


@settings(max_examples=200, deadline=None)
@given(price, price, price, tokens, tokens, tokens, tokens)
def test_charge_uses_the_same_formula_and_respects_the_cap(
    ip: str, op: str, markup: str, qi: int, qo: int, ui: int, uo: int
) -> None:
    assume(Decimal(markup) <= 100)
    table = _table(ip, op, markup)
    quote = quote_route(table, "small", qi, qo)
    uncapped = charge_for_usage(table, "small", ui, uo)
    assert uncapped.amount == quote_route(table, "small", ui, uo).amount
    charge = charge_for_usage(table, "small", ui, uo, cap=quote.amount)
    assert charge.amount <= quote.amount
    assert charge.capped == (uncapped.amount > quote.amount)
    if ui <= qi and uo <= qo:
        assert not charge.capped


def test_known_values() -> None:
    # $2.50/M in, $10/M out, 1000 in + 500 out = $0.0075 = 7500 units; +20% = 9000; + $0.0001 fee = 9100
    table = _table("2.50", "10.00", markup="0.20", fee="0.0001")
    quote = quote_route(table, "small", 1000, 500)
    assert (quote.upstream_cost, quote.amount, quote.margin) == (7500, 9100, 1600)
    # the float trap: $2.01 is 2_010_000 units, not 2_009_999
    assert quote_route(_table("2010000", "0"), "small", 1, 0).amount == 2_010_000
    # a third of a unit rounds up to one; the minimum charge wins when larger
    assert quote_route(_table("0.333333", "0"), "small", 1, 0).amount == 1
    assert quote_route(_table("0.1", "0.1", minimum="0.001"), "small", 10, 10).amount == 1000


def test_routes_that_do_not_fit() -> None:
    table = parse_price_table(VALID)  # context 8192, max output 2048
    with pytest.raises(RouteDoesNotFitError, match="max_output_tokens 2048"):
        quote_route(table, "small", 10, 2049)
    with pytest.raises(RouteDoesNotFitError, match="context window of 8192"):
        quote_route(table, "small", 7000, 2000)
    with pytest.raises(UnknownModelError):
        quote_route(table, "nope", 1, 1)
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match="non-negative integer"):
            quote_route(table, "small", bad, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cap"):
        charge_for_usage(table, "small", 1, 1, cap=-1)
