"""Choosing the journal a service runs on."""

from __future__ import annotations

from redis.asyncio import Redis

from payrouter.journal.base import Journal
from payrouter.journal.memory import MemoryJournal
from payrouter.journal.redis import RedisJournal

__all__ = ["open_journal"]


def open_journal(redis_url: str | None, namespace: str) -> Journal:
    """`RedisJournal` on ``redis_url`` (its own connection pool), else a `MemoryJournal`."""
    if redis_url is None:
        return MemoryJournal()
    return RedisJournal(Redis.from_url(redis_url, decode_responses=False, health_check_interval=30), namespace)
