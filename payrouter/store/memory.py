"""An in-process store for single-process development (no Redis)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from payrouter.store.base import StoreError

__all__ = ["MemoryStore"]


class MemoryStore:
    """`Store` in a dict. State is lost on exit and not shared between processes."""

    def __init__(self) -> None:
        self._data: dict[str, tuple[bytes, float]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._ids = itertools.count(1)

    def _live(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[1] <= time.monotonic():
            del self._data[key]
            return None
        return item[0]

    async def put(self, key: str, value: bytes, ttl_seconds: int) -> None:
        self._data[key] = (value, time.monotonic() + ttl_seconds)

    async def put_many(self, items: Sequence[tuple[str, bytes]], ttl_seconds: int) -> None:
        for key, value in items:
            await self.put(key, value, ttl_seconds)

    async def get(self, key: str) -> bytes | None:
        return self._live(key)

    async def incr(self, key: str, ttl_seconds: int) -> int:
        current = self._live(key)
        value = int(current) + 1 if current else 1
        expiry = self._data[key][1] if current else time.monotonic() + ttl_seconds
        self._data[key] = (str(value).encode(), expiry)
        return value

    async def claim(self, key: str, owner: str, ttl_seconds: int) -> bool:
        current = self._live(key)
        if current is not None:
            return current == owner.encode()  # a claim recognises its own owner, as on Redis
        self._data[key] = (owner.encode(), time.monotonic() + ttl_seconds)
        return True

    async def release(self, key: str, owner: str) -> bool:
        if self._live(key) == owner.encode():
            del self._data[key]
            return True
        return False

    async def replace(self, key: str, owner: str, value: str, ttl_seconds: int) -> bool:
        if self._live(key) == owner.encode():
            self._data[key] = (value.encode(), time.monotonic() + ttl_seconds)
            return True
        return False

    @asynccontextmanager
    async def lock(self, name: str, timeout_seconds: float = 10.0) -> AsyncIterator[None]:
        lock = self._locks.setdefault(name, asyncio.Lock())
        try:
            await asyncio.wait_for(lock.acquire(), timeout_seconds)
        except TimeoutError:
            raise StoreError(f"lock {name!r} not acquired within {timeout_seconds} s") from None
        try:
            yield
        finally:
            lock.release()

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
