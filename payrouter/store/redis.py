"""The Redis store: shared by every payrouter instance (standalone Redis or Cluster)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import unquote

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ClusterDownError, RedisClusterException, RedisError, SlotNotCoveredError
from redis.exceptions import ConnectionError as RedisConnectionError

from payrouter.store.base import StoreError, Written
from payrouter.store.pipe import ReplyError, ScriptPipe, pack

__all__ = [
    "CLUSTER_SCHEMES",
    "REDIS_ERRORS",
    "RedisClient",
    "RedisStore",
    "cluster_seeds",
    "connect",
    "is_cluster_url",
    "redis_call",
    "send_script",
]

# A standalone Redis or a Cluster: the stores speak to either through the same commands.
RedisClient = Redis | RedisCluster

# URL schemes naming Cluster seed nodes: ``redis+cluster://[user:password@]host:port[,host:port...]``
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")

# What a failed Redis call raises: a Cluster client's own errors (no reachable seed, a slot no
# node serves) are not `RedisError`s.
REDIS_ERRORS = (RedisError, RedisClusterException)

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
    """Await a redis-py call; any Redis failure becomes a `StoreError`.

    redis-py's cluster client can also fail with an AttributeError from a connection torn down
    under it while a master fails over (its writer already gone): that is a transport failure
    of unknown outcome too, and must reach the callers that handle one (deferred journal
    writes, fail-closed answers), not escape as a 500.
    """
    try:
        return await coro
    except REDIS_ERRORS as exc:
        raise StoreError(f"redis: {exc.__class__.__name__}: {exc}") from exc
    except AttributeError as exc:
        raise StoreError(f"redis: connection lost mid-command ({exc})") from exc


async def send_script(
    client: RedisClient,
    script: AsyncScript,
    keys: list[str],
    args: Sequence[bytes | str | int],
    pipe: ScriptPipe | None = None,
) -> Written[Any]:
    """Run ``script`` on ``keys`` and ``args``, returning once its command is written; its reply
    is read by `Written.reply` (raising `StoreError` for a Redis failure).

    With a ``pipe`` (a standalone Redis) the command is in the kernel's hands before this
    returns, so whatever the caller does next happens after the command left this process: a
    crash in between loses the reply, not the write. The script must tolerate running twice:
    a connection lost before the reply, or a reply that does not come within the pipe's
    ``reply_timeout``, makes `reply` send it once more on a fresh connection of the pipe, and a
    script the server does not hold yet is loaded and sent again. If the pipe cannot open, the
    call runs through ``client`` before this returns.

    Without one (a Cluster: slots, redirections, failovers; TLS) the call runs to its end
    through ``client`` before this returns.
    """

    async def through_client() -> Written[Any]:
        try:
            return Written.done(await redis_call(script(keys=keys, args=args)))
        except StoreError as exc:
            return Written.failed(exc)

    if pipe is None:
        return await through_client()
    command = pack(b"EVALSHA", script.sha, len(keys), *keys, *args)
    try:
        waiter = await pipe.send(command)
    except (OSError, TimeoutError):  # the pipe could not open: the client reconnects, or fails
        return await through_client()

    async def read() -> Any:
        try:
            reply = await pipe.reply(waiter)
        except (OSError, TimeoutError):  # lost or stalled (PipeBroken is an OSError)
            reply = await _once_more(pipe, command)
        if isinstance(reply, ReplyError) and str(reply).startswith("NOSCRIPT"):  # this one did not run
            loaded = await _once_more(
                pipe,
                pack(
                    b"SCRIPT", b"LOAD", bytes(script.script) if isinstance(script.script, memoryview) else script.script
                ),
            )
            if isinstance(loaded, ReplyError):
                raise StoreError(f"redis: {loaded}")
            reply = await _once_more(pipe, command)
        if isinstance(reply, ReplyError):
            raise StoreError(f"redis: {reply}")
        return reply

    return Written(read)


async def _once_more(pipe: ScriptPipe, command: bytes) -> Any:
    try:
        return await pipe.reply(await pipe.send(command))
    except (OSError, TimeoutError) as exc:
        raise StoreError(f"redis: {exc.__class__.__name__}: {exc}") from exc


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names Redis Cluster seed nodes (``redis+cluster://`` or ``rediss+cluster://``)."""
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def cluster_seeds(url: str) -> tuple[list[tuple[str, int]], str | None, str | None, bool]:
    """``(seed (host, port)s, username, password, tls)`` of a ``redis+cluster://`` URL.

    Raises:
        ValueError: not a cluster URL, no seed, a port that is not a number, or a database
            other than 0 (a Cluster has only database 0).
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in CLUSTER_SCHEMES:
        raise ValueError("a Redis Cluster URL starts with redis+cluster:// or rediss+cluster://")
    location, _, path = rest.partition("/")
    location = location.split("?", 1)[0]
    if path.split("?", 1)[0] not in ("", "0"):
        raise ValueError("a Redis Cluster has only database 0")
    username = password = None
    if "@" in location:
        userinfo, _, location = location.rpartition("@")
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    seeds = []
    for item in location.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon or not port.isdigit() or not host:
            raise ValueError(f"a Redis Cluster seed must be host:port, got {item.strip()!r}")
        seeds.append((host.strip("[]"), int(port)))
    return seeds, username, password, scheme.lower() == "rediss+cluster"


class _Cluster(RedisCluster):
    # A time-out says little about whether a command ran: like the standalone client, only
    # refused connections and a Cluster being failed over are retried.
    ERRORS_ALLOW_RETRY = (RedisConnectionError, ClusterDownError, SlotNotCoveredError)  # type: ignore[assignment]

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        # Commands sent before the client first learned the topology are routed without it in
        # redis-py 8.1 and can use a connection it closes meanwhile (AttributeError under
        # concurrent first use): learn the topology first, once (initialize holds a lock).
        if self._initialize and self.get_default_node() is None:
            await self.initialize()
        return await super().execute_command(*args, **kwargs)


def connect(url: str) -> RedisClient:
    """A client for ``url`` that retries a command on a broken connection (a Redis restart
    leaves every pooled connection stale; redis-py's ``from_url`` does not retry by itself).

    A ``redis+cluster://host:port,host:port`` URL gives a `RedisCluster` that learns the
    topology from any of the seeds. A command to a master that went away is retried (with a
    topology refresh) for about a second, then fails: while its replica is being promoted,
    requests fail closed instead of waiting.
    """
    if is_cluster_url(url):
        seeds, username, password, tls = cluster_seeds(url)
        return _Cluster(
            startup_nodes=[ClusterNode(host, port) for host, port in seeds],
            username=username,
            password=password,
            ssl=tls,
            decode_responses=False,
            # no health_check_interval: a stale connection fails and is retried instead
            retry=Retry(ExponentialBackoff(cap=0.4, base=0.05), retries=4),
        )
    retry = Retry(NoBackoff(), retries=1, supported_errors=(RedisConnectionError,))
    return Redis.from_url(url, decode_responses=False, health_check_interval=30, retry=retry)


class RedisStore:
    """`Store` on Redis. Every key is prefixed with ``namespace:``.

    A command that fails on a broken connection (a pooled connection left stale by a Redis
    restart or failover) is sent once more on a fresh connection. Claims and locks stay correct
    if the first attempt ran and only its reply was lost: a claim recognises its own owner.
    Such a retry can count an `incr` twice (the health failure counter; harmless).

    On a Cluster every key (and so every script) is one slot: the store's operations each
    touch a single key.

    Args:
        url: a ``redis://`` or ``rediss://`` URL, or ``redis+cluster://host:port,...`` (seeds).
        namespace: key prefix, so several deployments (or test runs) can share one Redis.
    """

    def __init__(self, url: str, namespace: str = "payrouter") -> None:
        # Only connection errors are retried: a timeout says little about whether the command ran.
        self._redis: RedisClient = connect(url)
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

    async def put_many(self, items: Sequence[tuple[str, bytes]], ttl_seconds: int) -> None:
        if not items:
            return
        # one key per command: a Cluster client routes each to its slot
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, value in items:
                pipe.set(self._k(key), value, ex=ttl_seconds)
            await self._run(pipe.execute())

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
            with contextlib.suppress(*REDIS_ERRORS):
                await self._release(keys=[key], args=[token])

    async def ping(self) -> None:
        await self._run(self._redis.ping())

    async def close(self) -> None:
        await self._redis.aclose()
