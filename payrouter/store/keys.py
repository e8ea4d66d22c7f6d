"""Every key payrouter keeps in the store, in one place (the store adds its namespace).

The payment journal keeps its own keys (`payrouter.journal.redis`, under the ``{j}`` hash tag).

Payment channels (`payrouter.channels`) hash by channel: each channel's key carries its id as
the hash tag, so every per-request step is one script on one slot and channels spread over a
Redis Cluster. Listing them therefore needs `CHANNEL_INDEX`, which sits in a slot of its own:
it is written beside the channel (not atomically with it) and read only by the claimer.
"""

from __future__ import annotations

__all__ = [
    "CHANNEL_INDEX",
    "CLAIMER_LAST_CLAIM",
    "CLAIMER_LOCK",
    "CLAIMER_SCANNED",
    "RECONCILER_LOCK",
    "channel",
    "gas_nonce",
    "health_breaker",
    "health_fails",
    "health_stats",
    "payment_id",
    "quote",
]

# held by the reconciler pass in progress (one at a time across instances)
RECONCILER_LOCK = "lock:reconciler"

# held by the channel claimer pass in progress (one at a time across instances)
CLAIMER_LOCK = "lock:claimer"
# when the claimer last claimed (Unix ms as decimal text): its claim interval counts from here
CLAIMER_LAST_CLAIM = "claimer:last-claim"
# the last block whose Claimed/Settled logs the claimer journaled (decimal text)
CLAIMER_SCANNED = "claimer:scanned-block"

# every known channel id (a sorted set scored by first sight, Unix ms); see the module docstring
CHANNEL_INDEX = "channels"


def channel(channel_id: str) -> str:
    """The state of the payment channel ``channel_id`` (a hash; ``{id}`` is its hash tag)."""
    return f"channel:{{{channel_id}}}"


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
