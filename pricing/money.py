"""Decimal-string USD amounts and their exact conversion to atomic units.

Money never touches ``float``: prices are parsed from strings into `Decimal`, converted
to exact `Fraction`s of an atomic unit, and rounded once, upwards, at the very end.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from functools import lru_cache

__all__ = ["MAX_DECIMAL_PLACES", "ceil_fraction", "parse_decimal", "usd_to_atomic"]

MAX_DECIMAL_PLACES = 18
_DECIMAL_RE = re.compile(r"^\d{1,12}(\.\d{1,18})?$")


def parse_decimal(value: object) -> Decimal:
    """Parse a non-negative decimal string such as ``"0.15"`` into a `Decimal`.

    Only plain decimal notation is accepted: no floats, exponents, signs, NaN or infinity,
    at most 12 integer digits and 18 decimal places.

    Raises:
        ValueError: with a message that says what was wrong (never a float).
    """
    if isinstance(value, bool) or not isinstance(value, str):
        kind = type(value).__name__
        raise ValueError(f'must be a decimal string like "0.15", got {kind} (floats lose cents)')
    if not _DECIMAL_RE.match(value):
        raise ValueError(f'must be a non-negative decimal string like "0.15", got {value!r}')
    try:
        return Decimal(value)
    except InvalidOperation:  # pragma: no cover - the regex admits only valid decimals
        raise ValueError(f"not a decimal: {value!r}") from None


@lru_cache(maxsize=4096)
def usd_to_atomic(usd: Decimal, decimals: int) -> Fraction:
    """Exact value of ``usd`` in atomic units of a USD stablecoin with ``decimals`` decimals."""
    scale: int = 10**decimals
    return Fraction(usd) * scale


def ceil_fraction(value: Fraction) -> int:
    """Smallest integer not below ``value``."""
    return -(-value.numerator // value.denominator)
