"""A Redis restart costs no request: stale pooled connections are retried once, and a retried
claim still recognises its owner. Runs a private redis-server, killed and restarted by PID."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from payrouter.store import RedisStore

REDIS_SERVER = "/usr/bin/redis-server"


class PrivateRedis:
    """A throwaway redis-server on a free loopback port, with no persistence."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            [*args, "--dir", str(self.directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 5
        with redis.Redis(port=self.port, socket_connect_timeout=0.5) as client:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline or self.process.poll() is not None:
                        raise
                    time.sleep(0.01)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(5)
            self.process = None

    def restart(self) -> None:
        self.kill()
        self.start()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if not Path(REDIS_SERVER).exists():
        pytest.skip(f"{REDIS_SERVER} is not installed")
    server = PrivateRedis(tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.kill()


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
        assert (await store.read_ledger(1)) == []

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
