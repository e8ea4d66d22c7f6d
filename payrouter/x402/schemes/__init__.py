"""Payment schemes behind the gate's one handshake (see `payrouter.x402.schemes.base`)."""

from __future__ import annotations

from payrouter.x402.schemes.base import Scheme, match_terms
from payrouter.x402.schemes.exact import EXACT, ExactScheme
from pricing import PriceTable

__all__ = ["EXACT", "ExactScheme", "Scheme", "build_schemes", "match_terms"]


def build_schemes(table: PriceTable, batch: Scheme | None = None) -> dict[str, Scheme]:
    """The schemes ``table`` offers, by name, preferred first.

    Args:
        batch: the ``batch-settlement`` scheme (it needs connections the caller opens).

    Raises:
        ValueError: the table offers a scheme it was not given.
    """
    schemes: dict[str, Scheme] = {}
    for name in table.schemes:
        if name == EXACT:
            schemes[name] = ExactScheme()
        elif batch is not None and name == batch.name:
            schemes[name] = batch
        else:
            raise ValueError(f"scheme {name!r} is offered but not configured")
    return schemes
