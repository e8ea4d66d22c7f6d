"""A Redis restart costs no request: stale pooled connections are retried once, and a retried
claim still recognises its owner. Runs a private redis-server, killed and restarted by PID."""

from __future__ import annotations

import asyncio

from payrouter.store import RedisStore
from tests.private_redis import PrivateRedis


async def test_store_calls_after_a_redis_restart_succeed(private_redis: PrivateRedis) -> None:
    store = RedisStore(private_redis.url, "restart")
    try:
        # several pooled connections, all of which the restart leaves stale
        await asyncio.gather(*(store.put(f"warm:{i}", b"x", 60) for i in range(5)))
        private_redis.restart()
        await asyncio.gather(*(store.put(f"again:{i}", b"y", 60) for i in range(5)))
        await store.put("q", b"quote", 60)
        assert await store.get("q") == b"quote"
        assert await store.claim("pay", "a", 60)
        assert await store.replace("pay", "a", "settled", 60)
        assert await store.incr("n", 60) == 1
        async with store.lock("gas", timeout_seconds=1):
            pass

        private_redis.restart()
        assert await store.claim("pay", "b", 60)  # the restart lost the old claim: no persistence
        assert await store.release("pay", "b")
    finally:
        await store.close()


async def test_claim_is_idempotent_for_its_owner(private_redis: PrivateRedis) -> None:
    # A claim whose reply was lost and that is sent again must not reject its own owner.
    store = RedisStore(private_redis.url, "claims")
    try:
        assert await store.claim("pay", "a", 60)
        assert await store.claim("pay", "a", 60)
        assert not await store.claim("pay", "b", 60)
        assert await store.get("pay") == b"a"
        assert await store.release("pay", "a")
        assert await store.claim("pay", "b", 60)
        assert not await store.claim("pay", "a", 60)
    finally:
        await store.close()
