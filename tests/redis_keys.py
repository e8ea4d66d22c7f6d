"""Remove what a test run wrote to the shared Redis."""

from __future__ import annotations

import redis

CHUNK = 500


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
