"""The Redis store: shared by every payrouter instance (standalone Redis or Cluster)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from payrouter.store.base import StoreError

__all__ = ["RedisStore", "connect", "redis_call"]

# Set-if-absent that also answers yes to the owner it already holds: a command is retried once
# on a broken connection, and a claim whose reply was lost after it ran must not reject itself.
_CLAIM = (
    "local v = redis.call('get', KEYS[1]) "
    "if not v then redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end "
    "if v == ARGV[1] then return 1 else return 0 end"
)
# Compare-and-delete / compare-and-set: a claim or lock is only touched by its owner,
# so a slow worker whose claim expired cannot delete a newer owner's claim.
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
_REPLACE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "redis.call('set', KEYS[1], ARGV[2], 'EX', ARGV[3]) return 1 else return 0 end"
)
_INCR = "local v = redis.call('incr', KEYS[1]) if v == 1 then redis.call('expire', KEYS[1], ARGV[1]) end return v"


async def redis_call(coro: Any) -> Any:
    """Await a redis-py call; any Redis failure becomes a `StoreError`."""
    try:
        return await coro
    except RedisError as exc:
        raise StoreError(f"redis: {exc.__class__.__name__}: {exc}") from exc


def connect(url: str) -> Redis:
    """A client for ``url`` that retries a command once on a broken connection (a Redis restart
    leaves every pooled connection stale; redis-py's ``from_url`` does not retry by itself)."""
    retry = Retry(NoBackoff(), retries=1, supported_errors=(RedisConnectionError,))
    return Redis.from_url(url, decode_responses=False, health_check_interval=30, retry=retry)


class RedisStore:
    """`Store` on Redis. Every key is prefixed with ``namespace:``.

    A command that fails on a broken connection (a pooled connection left stale by a Redis
    restart or failover) is sent once more on a fresh connection. Claims and locks stay correct
    if the first attempt ran and only its reply was lost: a claim recognises its own owner.
    Such a retry can count an `incr` twice (the health failure counter; harmless).

    Args:
        url: a ``redis://`` or ``rediss://`` URL.
        namespace: key prefix, so several deployments (or test runs) can share one Redis.
    """

    def __init__(self, url: str, namespace: str = "payrouter") -> None:
        # Only connection errors are retried: a timeout says little about whether the command ran.
        self._redis: Redis = connect(url)
        self._ns = namespace
        self._claim = self._redis.register_script(_CLAIM)
        self._release = self._redis.register_script(_RELEASE)
        self._replace = self._redis.register_script(_REPLACE)
        self._incr = self._redis.register_script(_INCR)

    def _k(self, key: str) -> str:
        return f"{self._ns}:{key}"

    async def _run(self, coro: Any) -> Any:
        return await redis_call(coro)

    async def put(self, key: str, value: bytes, ttl_seconds: int) -> None:
        await self._run(self._redis.set(self._k(key), value, ex=ttl_seconds))

    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self._run(self._redis.get(self._k(key)))
        return value

    async def incr(self, key: str, ttl_seconds: int) -> int:
        return int(await self._run(self._incr(keys=[self._k(key)], args=[ttl_seconds])))

    async def claim(self, key: str, owner: str, ttl_seconds: int) -> bool:
        return bool(await self._run(self._claim(keys=[self._k(key)], args=[owner, ttl_seconds * 1000])))

    async def release(self, key: str, owner: str) -> bool:
        return bool(await self._run(self._release(keys=[self._k(key)], args=[owner])))

    async def replace(self, key: str, owner: str, value: str, ttl_seconds: int) -> bool:
        return bool(await self._run(self._replace(keys=[self._k(key)], args=[owner, value, ttl_seconds])))

    @asynccontextmanager
    async def lock(self, name: str, timeout_seconds: float = 10.0) -> AsyncIterator[None]:
        key = self._k(f"lock:{name}")
        token = secrets.token_hex(16)
        deadline = time.monotonic() + timeout_seconds
        # The lock's own expiry bounds how long a crashed holder can block others.
        while not await self._run(self._claim(keys=[key], args=[token, int(timeout_seconds * 1000) + 5000])):
            if time.monotonic() >= deadline:
                raise StoreError(f"lock {name!r} not acquired within {timeout_seconds} s")
            await asyncio.sleep(0.001)
        try:
            yield
        finally:
            # Best effort: an unreleased lock expires by itself, and the work inside it is done.
            with contextlib.suppress(RedisError):
                await self._release(keys=[key], args=[token])

    async def ping(self) -> None:
        await self._run(self._redis.ping())

    async def close(self) -> None:
        await self._redis.aclose()
