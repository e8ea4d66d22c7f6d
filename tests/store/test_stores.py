"""Every store behaves alike: the in-memory one, Redis (real, on 127.0.0.1:6379) and a real local
Redis Cluster (3 masters, 3 replicas; `tests.cluster`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from payrouter.store import MemoryStore, RedisStore, Store, StoreError
from tests.redis_keys import run_token

from ..cluster import REDIS_BACKENDS, delete_keys, redis_url_for
from ..polling import async_wait_until


@pytest.fixture(params=["memory", *REDIS_BACKENDS])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    url = redis_url_for(request.param, request)
    namespace = f"payrouter-test-store-{run_token()}"
    s = RedisStore(url, namespace)
    try:
        yield s
    finally:
        try:
            await s.close()
        finally:
            delete_keys(url, namespace)


async def test_put_get_expire(store: Store) -> None:
    put_at = time.monotonic()
    await store.put("q", b"value", 1)
    assert await store.get("q") == b"value"
    assert await store.get("missing") is None
    await async_wait_until(lambda: _gone(store, "q"), "the 1 s TTL of q to expire", timeout=3, interval=0.02)
    assert time.monotonic() - put_at >= 0.9, "expired well before its TTL"


async def test_put_many_writes_each_with_its_ttl(store: Store) -> None:
    # keys that hash to different slots: a Cluster routes each to its own
    items = [(f"many:{i}", f"v{i}".encode()) for i in range(20)]
    await store.put_many(items, 1)
    await store.put_many([], 1)
    assert [await store.get(key) for key, _ in items] == [value for _, value in items]
    await async_wait_until(
        lambda: _gone(store, "many:19"), "the 1 s TTL of many:19 to expire", timeout=3, interval=0.02
    )


async def _gone(store: Store, key: str) -> bool:
    return await store.get(key) is None


async def test_claim_is_exclusive_and_owned(store: Store) -> None:
    assert await store.claim("pay", "a", 60)
    assert not await store.claim("pay", "b", 60)
    assert not await store.release("pay", "b")  # not b's to release
    assert not await store.replace("pay", "b", "settled", 60)
    assert await store.replace("pay", "a", "settled", 60)
    assert await store.get("pay") == b"settled"
    assert not await store.release("pay", "a")  # a no longer owns it: settled is final
    assert not await store.claim("pay", "c", 60)


async def test_concurrent_claims_have_one_winner(store: Store) -> None:
    results = await asyncio.gather(*(store.claim("race", f"o{i}", 60) for i in range(50)))
    assert results.count(True) == 1


async def test_released_claim_can_be_claimed_again(store: Store) -> None:
    assert await store.claim("retry", "a", 60)
    assert await store.release("retry", "a")
    assert await store.claim("retry", "b", 60)


async def test_lock_is_mutually_exclusive(store: Store) -> None:
    inside = 0
    peak = 0

    async def worker() -> None:
        nonlocal inside, peak
        async with store.lock("gas", timeout_seconds=5):
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.005)
            inside -= 1

    await asyncio.gather(*(worker() for _ in range(10)))
    assert peak == 1


async def test_lock_timeout_is_an_error(store: Store) -> None:
    async with store.lock("busy", timeout_seconds=5):
        with pytest.raises(StoreError, match="not acquired"):
            async with store.lock("busy", timeout_seconds=0.05):
                pass


@pytest.mark.parametrize("url", ["redis://127.0.0.1:1/0", "redis+cluster://127.0.0.1:1,127.0.0.1:2"])
async def test_unreachable_redis_is_a_store_error(url: str) -> None:
    s = RedisStore(url)
    with pytest.raises(StoreError):
        await s.ping()
    await s.close()


async def test_incr_counts_and_expires(store: Store) -> None:
    first_at = time.monotonic()
    assert [await store.incr("n", 1) for _ in range(3)] == [1, 2, 3]

    async def restarted() -> bool:
        # later increments do not extend the TTL: once it runs out, the count starts again
        return await store.incr("n", 1) == 1

    await async_wait_until(restarted, "the counter to expire 1 s after its first increment", timeout=3, interval=0.02)
    assert time.monotonic() - first_at >= 0.9, "expired well before its TTL"


async def test_a_connection_torn_down_mid_command_is_a_store_error() -> None:
    # redis-py's cluster client, during a failover, can fail with an AttributeError from a
    # connection whose writer is already gone: callers handle it as the StoreError it is
    from payrouter.store.redis import redis_call

    async def torn() -> None:
        raise AttributeError("'NoneType' object has no attribute 'writelines'")

    with pytest.raises(StoreError, match="connection lost mid-command"):
        await redis_call(torn())
