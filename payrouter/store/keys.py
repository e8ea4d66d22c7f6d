"""Every key payrouter keeps in the store, in one place (the store adds its namespace).

The payment journal keeps its own keys (`payrouter.journal.redis`, under the ``{j}`` hash tag).
"""

from __future__ import annotations

__all__ = [
    "RECONCILER_LOCK",
    "gas_nonce",
    "health_breaker",
    "health_fails",
    "health_stats",
    "payment_id",
    "quote",
]

# held by the reconciler pass in progress (one at a time across instances)
RECONCILER_LOCK = "lock:reconciler"


def quote(digest: str) -> str:
    """The quote of the request ``digest`` (lives as long as a payment may be signed for it)."""
    return f"quote:{digest}"


def payment_id(payer: str, pid: str) -> str:
    """The payment a payer's x402 payment-identifier ``pid`` is bound to."""
    return f"pid:{payer.lower()}:{pid}"


def gas_nonce(chain_id: int, address: str) -> str:
    """The next nonce of a gas wallet (and, as a lock name, its mutual exclusion)."""
    return f"gas-nonce:{chain_id}:{address}"


def health_fails(model: str) -> str:
    """Recent failures of ``model`` (a counter in a window)."""
    return f"health:fails:{model}"


def health_breaker(model: str) -> str:
    """``model``'s open circuit breaker (until, reason)."""
    return f"health:breaker:{model}"


def health_stats(model: str) -> str:
    """``model``'s latency and throughput statistics."""
    return f"health:stats:{model}"
