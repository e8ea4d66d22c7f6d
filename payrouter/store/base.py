"""The `Store` protocol every state backend implements."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Protocol

__all__ = ["Store", "StoreError"]


class StoreError(RuntimeError):
    """The store could not be reached or refused an operation."""


class Store(Protocol):
    """Key-value state with expiry, atomic claims and locks (payments live in `payrouter.journal`).

    Keys are plain strings chosen by the caller; implementations add their namespace.
    """

    async def put(self, key: str, value: bytes, ttl_seconds: int) -> None:
        """Set ``key`` to ``value``, expiring after ``ttl_seconds``."""
        ...

    async def get(self, key: str) -> bytes | None:
        """The value of ``key``, or None when absent or expired."""
        ...

    async def incr(self, key: str, ttl_seconds: int) -> int:
        """Atomically add one to the counter ``key`` (created at 0, expiring ``ttl_seconds`` after
        its first increment) and return the new value."""
        ...

    async def claim(self, key: str, owner: str, ttl_seconds: int) -> bool:
        """Atomically set ``key`` to ``owner`` if it is absent. True when this caller won, or
        when ``key`` already holds ``owner`` (a claim sent twice is still its owner's)."""
        ...

    async def release(self, key: str, owner: str) -> bool:
        """Delete ``key`` only if it still holds ``owner``. True when deleted."""
        ...

    async def replace(self, key: str, owner: str, value: str, ttl_seconds: int) -> bool:
        """Set ``key`` to ``value`` only if it still holds ``owner``. True when replaced."""
        ...

    def lock(self, name: str, timeout_seconds: float = 10.0) -> AbstractAsyncContextManager[None]:
        """A mutual-exclusion lock shared by every user of the store.

        Raises:
            StoreError: the lock was not acquired within ``timeout_seconds``.
        """
        ...

    async def ping(self) -> None:
        """Raise StoreError if the store cannot be reached."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
