"""Channel state in a dict: one process, development only (state is lost on exit).

The rules are `RedisChannelStore`'s, step for step; no method awaits between its read and its
write, so each step is atomic on the event loop.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, replace

from payrouter.channels.state import (
    ChannelState,
    InvalidCharge,
    Reserved,
    channel_key_id,
    check_uint,
    expected_charged,
)
from payrouter.store.base import Written

__all__ = ["MemoryChannelStore"]


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(slots=True)
class _Channel:
    state: ChannelState
    # The voucher of the request in flight: adopted by commit, dropped by release.
    pending_max: int = 0
    pending_signature: str = ""
    committed: str = ""  # the token of the last commit (a retried commit finds it)


class MemoryChannelStore:
    """`ChannelStore` for a single process (the same rules as `RedisChannelStore`)."""

    def __init__(self) -> None:
        self._channels: dict[str, _Channel] = {}

    async def get(self, channel_id: str) -> ChannelState | None:
        channel = self._channels.get(channel_key_id(channel_id))
        return channel.state if channel else None

    async def get_many(self, ids: Iterable[str]) -> dict[str, ChannelState]:
        found = (self._channels.get(channel_key_id(i)) for i in ids)
        return {c.state.channel_id: c.state for c in found if c is not None}

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
        expected = expected_charged(amount=amount, signed_max=signed_max, token=token, ttl_ms=ttl_ms, refund=refund)
        channel = self._channels.get(channel_key_id(channel_id))
        if channel is None:
            return Reserved("not_found", None)
        state, now = channel.state, _now_ms()
        if state.pending not in ("", token) and state.pending_until_ms > now:
            return Reserved("busy", state)
        if state.charged != expected:
            return Reserved("mismatch", state)
        if signed_max > state.balance:
            return Reserved("exceeds_balance", state)
        if state.withdraw_requested_at != 0 and not refund:
            return Reserved("withdrawing", state)
        channel.state = replace(state, pending=token, pending_until_ms=now + ttl_ms)
        channel.pending_max, channel.pending_signature = signed_max, signature
        return Reserved("ok", channel.state)

    async def commit(self, channel_id: str, token: str, charge: int) -> ChannelState | None:
        if type(charge) is not int or charge < 0:
            raise InvalidCharge(f"charge must be a non-negative int, got {charge!r}")
        channel = self._channels.get(channel_key_id(channel_id))
        if channel is None or not token:
            return None
        if channel.state.pending != token:
            return channel.state if channel.committed == token else None
        charged = channel.state.charged + charge
        if charged > channel.pending_max:
            raise InvalidCharge(f"charged {charged} would exceed the voucher's max {channel.pending_max}")
        channel.state = replace(
            channel.state,
            charged=charged,
            signed_max=channel.pending_max,
            signature=channel.pending_signature,
            pending="",
            pending_until_ms=0,
        )
        channel.pending_max, channel.pending_signature, channel.committed = 0, "", token
        return channel.state

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
        reserved = await self.reserve(
            channel_id,
            amount=amount,
            signed_max=signed_max,
            signature=signature,
            token=token,
            ttl_ms=ttl_ms,
            refund=refund,
        )
        return Written.done(reserved)

    async def send_commit(self, channel_id: str, token: str, charge: int) -> Written[ChannelState | None]:
        return Written.done(await self.commit(channel_id, token, charge))

    async def release(self, channel_id: str, token: str) -> bool:
        channel = self._channels.get(channel_key_id(channel_id))
        if channel is None or not token or channel.state.pending != token:
            return False
        channel.state = replace(channel.state, pending="", pending_until_ms=0)
        channel.pending_max, channel.pending_signature = 0, ""
        return True

    async def extend(self, channel_id: str, token: str, ttl_ms: int) -> bool:
        channel = self._channels.get(channel_key_id(channel_id))
        if channel is None or not token or channel.state.pending != token:
            return False
        channel.state = replace(channel.state, pending_until_ms=_now_ms() + ttl_ms)
        return True

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
        key = channel_key_id(channel_id)
        check_uint("balance", balance)
        check_uint("total_claimed", total_claimed)
        check_uint("withdraw_requested_at", withdraw_requested_at, 40)
        check_uint("refund_nonce", refund_nonce, 256)
        check_uint("synced_at_ms", synced_at_ms, 53)
        channel = self._channels.get(key)
        if channel is None:
            state = ChannelState(
                channel_id=key,
                config=config,
                payer=payer,
                balance=balance,
                total_claimed=total_claimed,
                withdraw_requested_at=withdraw_requested_at,
                refund_nonce=refund_nonce,
                synced_at_ms=synced_at_ms,
                charged=total_claimed,
                signed_max=0,
                signature="",
                pending="",
                pending_until_ms=0,
            )
            self._channels[key] = _Channel(state)
            return state
        state = channel.state
        if synced_at_ms >= state.synced_at_ms:
            state = replace(
                state,
                config=config,
                payer=payer,
                balance=balance,
                withdraw_requested_at=withdraw_requested_at,
                refund_nonce=refund_nonce,
                synced_at_ms=synced_at_ms,
            )
        channel.state = _claimed(state, total_claimed)
        return channel.state

    async def record_claimed(self, channel_id: str, total_claimed: int) -> None:
        check_uint("total_claimed", total_claimed)
        channel = self._channels.get(channel_key_id(channel_id))
        if channel is not None:
            channel.state = _claimed(channel.state, total_claimed)

    async def ids(self) -> list[str]:
        return list(self._channels)

    async def delete(self, channel_id: str) -> None:
        self._channels.pop(channel_key_id(channel_id), None)

    async def close(self) -> None:
        return None


def _claimed(state: ChannelState, total_claimed: int) -> ChannelState:
    """``state`` with ``total_claimed`` raised (never lowered) and ``charged`` kept at or above it."""
    claimed = max(state.total_claimed, total_claimed)
    return replace(state, total_claimed=claimed, charged=max(state.charged, claimed))
