"""Choosing the journal a service runs on."""

from __future__ import annotations

from payrouter.journal.base import Journal
from payrouter.journal.memory import MemoryJournal
from payrouter.journal.redis import RedisJournal
from payrouter.store.redis import connect

__all__ = ["open_journal"]


def open_journal(redis_url: str | None, namespace: str) -> Journal:
    """`RedisJournal` on ``redis_url`` (its own connection pool, retrying once on a stale
    connection), else a `MemoryJournal`."""
    if redis_url is None:
        return MemoryJournal()
    return RedisJournal(connect(redis_url), namespace)
