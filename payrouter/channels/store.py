"""The `ChannelStore` protocol: the server's per-channel state, changed only by atomic steps."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from payrouter.channels.memory import MemoryChannelStore
from payrouter.channels.redis import RedisChannelStore
from payrouter.channels.state import ChannelState, Reserved
from payrouter.store.base import Written
from payrouter.store.redis import connect

__all__ = ["ChannelStore", "open_channel_store"]


class ChannelStore(Protocol):
    """Per-channel state shared by every server instance.

    Each method is one atomic step on one channel: the request gate runs reserve, then commit
    or release; the chain watcher runs `upsert_onchain`; the claimer `ids`, `get_many` and
    `record_claimed`. Invariant: ``total_claimed <= charged``. Amounts are uint128.

    A reservation that lapsed (its ``pending_until_ms`` passed) no longer blocks anyone, but its
    token can still commit or release it until another request takes the channel.

    Implementations: `RedisChannelStore` (shared), `MemoryChannelStore` (one process).
    """

    async def get(self, channel_id: str) -> ChannelState | None:
        """The channel, or None when the store has none."""
        ...

    async def get_many(self, ids: Iterable[str]) -> dict[str, ChannelState]:
        """The channels among ``ids`` the store has, by (lower-case) id."""
        ...

    async def reserve(
        self,
        channel_id: str,
        *,
        amount: int,
        signed_max: int,
        signature: str,
        token: str,
        ttl_ms: int,
        refund: bool = False,
    ) -> Reserved:
        """Take the channel for one request paid with the voucher ``(signed_max, signature)``.

        Checked in this order: the channel exists (``not_found``); no other live reservation
        (``busy``; the same ``token`` again takes it afresh, so a retried call is harmless);
        ``signed_max == charged + amount``, or ``== charged`` for a refund (``mismatch``);
        ``signed_max <= balance`` (``exceeds_balance``); no withdrawal pending
        (``withdrawing``; a refund is still allowed: it adds no charge). On ``ok`` the voucher
        is held as pending until `commit`; nothing else changes.

        Raises:
            ValueError: an amount out of range, an empty token or ``ttl_ms`` outside
                ``[1, MAX_TTL_MS]``.
        """
        ...

    async def send_reserve(
        self,
        channel_id: str,
        *,
        amount: int,
        signed_max: int,
        signature: str,
        token: str,
        ttl_ms: int,
        refund: bool = False,
    ) -> Written[Reserved]:
        """`reserve`, returning once it is written (see `payrouter.store.Written`); ``reply()``
        gives what `reserve` would have. The caller can check something else while the store
        works, and must `release` an ``ok`` it no longer wants.

        Raises:
            ValueError: as `reserve`, before anything is written.
        """
        ...

    async def commit(self, channel_id: str, token: str, charge: int) -> ChannelState | None:
        """End ``token``'s request: ``charged += charge`` and adopt its voucher as the latest.

        Returns the new state, or None (nothing changed) when ``token`` no longer holds the
        channel. Committing the last committed token again (a retry whose reply was lost)
        returns the current state and changes nothing.

        Raises:
            InvalidCharge: ``charge < 0`` or ``charged + charge`` above the reserved voucher's
                max; nothing changed.
        """
        ...

    async def send_commit(self, channel_id: str, token: str, charge: int) -> Written[ChannelState | None]:
        """`commit`, returning once the commit is written (see `payrouter.store.Written`): its
        reply, the new state or None, comes from ``reply()``, which raises what `commit` would
        (``InvalidCharge`` for a negative charge is raised here, before anything is written)."""
        ...

    async def release(self, channel_id: str, token: str) -> bool:
        """End ``token``'s request without a charge (it failed): the voucher is not adopted.
        True when ``token`` held the channel (a retried release whose first reply was lost
        answers False; the channel is free either way)."""
        ...

    async def extend(self, channel_id: str, token: str, ttl_ms: int) -> bool:
        """Keep ``token``'s reservation ``ttl_ms`` more from now (a refund in doubt holds its
        channel until the chain decides). False when ``token`` no longer holds the channel."""
        ...

    async def upsert_onchain(
        self,
        channel_id: str,
        *,
        config: str,
        payer: str,
        balance: int,
        total_claimed: int,
        withdraw_requested_at: int,
        refund_nonce: int,
        synced_at_ms: int,
    ) -> ChannelState:
        """Create the channel (after a deposit) or refresh its on-chain mirror; return it.

        A read older than the stored one (smaller ``synced_at_ms``) does not overwrite it.
        ``total_claimed`` only rises; ``charged`` never falls and is raised to
        ``total_claimed`` when below it (the charges since the last claim were lost).
        """
        ...

    async def record_claimed(self, channel_id: str, total_claimed: int) -> None:
        """A claim up to ``total_claimed`` landed: raise the mirror (never lower it). No-op
        for an unknown channel."""
        ...

    async def ids(self) -> list[str]:
        """Every channel the store knows (for the claimer). May name a channel deleted a
        moment ago; `get_many` skips those."""
        ...

    async def delete(self, channel_id: str) -> None:
        """Forget the channel (after a full refund). No-op when absent."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


def open_channel_store(redis_url: str | None, namespace: str) -> ChannelStore:
    """`RedisChannelStore` on ``redis_url`` (its own connection pool, retrying once on a stale
    connection), else a `MemoryChannelStore`."""
    if redis_url is None:
        return MemoryChannelStore()
    return RedisChannelStore(connect(redis_url), namespace)
