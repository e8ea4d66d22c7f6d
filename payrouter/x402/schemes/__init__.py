"""Payment schemes behind the gate's one handshake (see `payrouter.x402.schemes.base`)."""

from __future__ import annotations

from payrouter.x402.schemes.base import Scheme, match_terms
from payrouter.x402.schemes.exact import EXACT, ExactScheme
from pricing import PriceTable

__all__ = ["EXACT", "ExactScheme", "Scheme", "build_schemes", "match_terms"]


def build_schemes(table: PriceTable) -> dict[str, Scheme]:
    """The schemes ``table`` offers, by name, preferred first.

    Raises:
        ValueError: a scheme this build cannot serve.
    """
    schemes: dict[str, Scheme] = {}
    for name in table.schemes:
        if name == EXACT:
            schemes[name] = ExactScheme()
        else:
            raise ValueError(f"scheme {name!r} is not available in this build")
    return schemes
