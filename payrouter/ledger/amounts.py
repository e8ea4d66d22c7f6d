"""Atomic units rendered as decimal USD strings, exactly."""

from __future__ import annotations

__all__ = ["usd"]


def usd(atomic: int, decimals: int) -> str:
    """``atomic`` units of a USD stablecoin with ``decimals`` decimals as a decimal string.

    Exact at any size (integer arithmetic, no float, no Decimal context precision), with all
    ``decimals`` places: ``usd(1234500, 6) == "1.234500"``, ``usd(-5, 6) == "-0.000005"``.
    """
    if decimals == 0:
        return str(atomic)
    whole, frac = divmod(abs(atomic), 10**decimals)
    sign = "-" if atomic < 0 else ""
    return f"{sign}{whole}.{frac:0{decimals}d}"
