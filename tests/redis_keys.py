"""Remove what a test run wrote to the shared Redis.

Every name a test gives its keys in the shared Redis (a namespace, a key prefix) ends in
`run_token()`: this run's id and a random part. Whatever a test leaves behind (a failure, a killed
server) is deleted at the end of the session by `delete_run_keys` (tests/conftest.py), without
touching the keys of other runs on the same Redis.
"""

from __future__ import annotations

import os
import re
import secrets

import redis

CHUNK = 500
REDIS_URL = "redis://127.0.0.1:6379/0"
# one id per test session, shared with the processes it starts (they inherit the environment)
RUN_ID = os.environ.setdefault("PAYROUTER_TEST_RUN", secrets.token_hex(3))
_used = False


def run_token() -> str:
    """A unique suffix for a name in the shared Redis: this run's id, then 4 random hex digits."""
    global _used
    _used = True
    return f"{RUN_ID}{secrets.token_hex(2)}"


def is_run_key(key: bytes | str) -> bool:
    """Whether ``key`` is under a name of this run: its first ``:``-separated part is
    ``payrouter-...-<run_token()>``."""
    name = (key.decode() if isinstance(key, bytes) else key).split(":", 1)[0]
    return re.fullmatch(rf"payrouter-[^:]*-{RUN_ID}[0-9a-f]{{4}}", name) is not None


def delete_run_keys(url: str = REDIS_URL) -> int:
    """Delete every key this run left in the shared Redis; return how many (0 when no test asked for
    a `run_token()`, without connecting: a run of pure unit tests needs no Redis)."""
    if not _used:
        return 0
    deleted = 0
    with redis.Redis.from_url(url) as r:
        keys = [k for k in r.scan_iter(match=f"payrouter-*{RUN_ID}*", count=CHUNK) if is_run_key(k)]
        for i in range(0, len(keys), CHUNK):
            deleted += int(r.delete(*keys[i : i + CHUNK]))
    return deleted


def delete_namespace(url: str, namespace: str) -> int:
    """Delete every key under ``namespace:`` (SCAN, never KEYS: the Redis may be shared); return how many.

    Raises:
        AssertionError: keys of the namespace are still there afterwards.
    """
    deleted = 0
    with redis.Redis.from_url(url) as r:
        batch: list[bytes] = []
        for key in r.scan_iter(match=f"{namespace}:*", count=CHUNK):
            batch.append(key)
            if len(batch) == CHUNK:
                deleted += int(r.delete(*batch))
                batch = []
        if batch:
            deleted += int(r.delete(*batch))
        left = next(r.scan_iter(match=f"{namespace}:*", count=CHUNK), None)
    assert left is None, f"{namespace}: {left!r} is still in Redis after the clean-up"
    return deleted


def journal_record(url: str, namespace: str, payer: str, nonce: str) -> dict[str, str]:
    """The stored fields of the ``exact`` payment ``(payer, nonce)`` in the journal of
    ``namespace`` (empty when there is no record)."""
    with redis.Redis.from_url(url, decode_responses=True) as client:
        data: dict[str, str] = client.hgetall(f"{namespace}:{{j}}:rec:exact:{payer.lower()}:{nonce}")
        return data
