"""The `Store` protocol every state backend implements."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Generic, Protocol, TypeVar

__all__ = ["Store", "StoreError", "Written"]

T = TypeVar("T")


class StoreError(RuntimeError):
    """The store could not be reached or refused an operation."""


class Store(Protocol):
    """Key-value state with expiry, atomic claims and locks (payments live in `payrouter.journal`).

    Keys are plain strings chosen by the caller; implementations add their namespace.
    """

    async def put(self, key: str, value: bytes, ttl_seconds: int) -> None:
        """Set ``key`` to ``value``, expiring after ``ttl_seconds``."""
        ...

    async def put_many(self, items: Sequence[tuple[str, bytes]], ttl_seconds: int) -> None:
        """`put` each ``(key, value)`` of ``items``, in one round trip where the store can (not
        atomically: a failure may leave some written)."""
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


class Written(Generic[T]):
    """A store write that has left this process; `reply` reads what it did.

    What makes it worth having: a caller can write the record of a charge, send its answer, and
    only then wait for the store's reply, yet no answer goes out before its record was written.
    A backend that cannot split writing from reading (a Cluster, the memory store) runs the whole
    write before handing one out.

    `reply` returns, or raises, what the blocking call would have (`StoreError` for a store
    failure); every later call gives the same outcome without touching the store again.
    """

    __slots__ = ("_error", "_read", "_value")

    def __init__(self, read: Callable[[], Awaitable[T]]) -> None:
        self._read: Callable[[], Awaitable[T]] | None = read
        self._value: T | None = None
        self._error: BaseException | None = None

    @classmethod
    def done(cls, value: T) -> Written[T]:
        """A write already answered with ``value``."""
        written: Written[T] = cls.__new__(cls)
        written._read, written._value, written._error = None, value, None
        return written

    @classmethod
    def failed(cls, error: BaseException) -> Written[T]:
        """A write already answered with ``error``."""
        written: Written[T] = cls.__new__(cls)
        written._read, written._value, written._error = None, None, error
        return written

    async def reply(self) -> T:
        """The write's outcome (read once; cancelling the first read loses it: the call then
        raises `StoreError`)."""
        read, self._read = self._read, None
        if read is not None:
            self._error = StoreError("the reply was not read (its read was cancelled)")
            try:
                self._value, self._error = await read(), None
            except Exception as exc:
                self._error = exc
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]
