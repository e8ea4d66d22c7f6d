"""Every key payrouter keeps in Redis, in one place (the stores add their namespace).

On a Redis Cluster every atomic step (a Lua script, a multi-key command) must touch one hash
slot, so each family of keys one step touches shares a hash tag (`atomic_groups` lists them;
tests/cluster checks them and runs every script on a real cluster):

- The payment journal (`payrouter.journal.redis`) keeps every record, its kept answer and its
  indexes (open, time, settled, debts, exposure) under the ``{j}`` hash tag: a transition
  moves a record and its indexes in one script, and the reconciler, the claimer and the
  ledger list records from those indexes, never by scanning the keyspace. The price: the
  journal lives on one slot, so on one master (its replicas take over when it fails).
- Every other key stands alone (one key per operation) and hashes wherever it falls.

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
    "CLAIMER_MOVEMENTS",
    "CLAIMER_SCANNED",
    "JOURNAL_INDEXES",
    "RECONCILER_LOCK",
    "atomic_groups",
    "channel",
    "gas_nonce",
    "health_breaker",
    "health_fails",
    "health_stats",
    "journal_answer",
    "journal_index",
    "journal_record",
    "payment_id",
]

# the payment journal's hash tag: every journal key carries it
JOURNAL_TAG = "{j}"
# the journal's indexes (`journal_index`)
JOURNAL_INDEXES = ("open", "time", "settled", "debts", "exposure", "exposure-high")

# held by the reconciler pass in progress (one at a time across instances)
RECONCILER_LOCK = "lock:reconciler"

# held by the channel claimer pass in progress (one at a time across instances)
CLAIMER_LOCK = "lock:claimer"
# when the claimer last claimed (Unix ms as decimal text): its claim interval counts from here
CLAIMER_LAST_CLAIM = "claimer:last-claim"
# the last block whose Claimed/Settled logs the claimer journaled (decimal text)
CLAIMER_SCANNED = "claimer:scanned-block"
# the claimer's scan of channel deposits, refunds and withdrawals: JSON {"block", "channels"}
CLAIMER_MOVEMENTS = "claimer:movements"

# every known channel id (a sorted set scored by first sight, Unix ms); see the module docstring
CHANNEL_INDEX = "channels"


def journal_record(record_id: str) -> str:
    """A payment record of the journal (a hash)."""
    return f"{JOURNAL_TAG}:rec:{record_id}"


def journal_answer(record_id: str) -> str:
    """The answer kept for a payment record (the payer may fetch it again)."""
    return f"{JOURNAL_TAG}:ans:{record_id}"


def journal_index(name: str) -> str:
    """One of the journal's `JOURNAL_INDEXES`."""
    if name not in JOURNAL_INDEXES:
        raise ValueError(f"no journal index {name!r}")
    return f"{JOURNAL_TAG}:{name}"


def channel(channel_id: str) -> str:
    """The state of the payment channel ``channel_id`` (a hash; ``{id}`` is its hash tag)."""
    return f"channel:{{{channel_id}}}"


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


def _journal_group(record_id: str) -> list[str]:
    return [journal_record(record_id), journal_answer(record_id), *map(journal_index, JOURNAL_INDEXES)]


def atomic_groups() -> dict[str, list[str]]:
    """Per family of keys that one atomic step touches together, sample keys (from sample ids):
    every key of a group must hash to one Cluster slot. Single-key operations need no group."""
    return {
        "journal": _journal_group("exact:0xabc:0x01") + _journal_group("batch-settlement:0xdef:7"),
        "channel": [channel("0x" + "ab" * 32)],
    }
