"""Shared state: quotes, claims, locks and counters (payments live in `payrouter.journal`).

`RedisStore` is the real one (any number of instances share it); `MemoryStore` serves a
single process when no Redis URL is configured (development only).
"""

from payrouter.store.base import Store, StoreError
from payrouter.store.memory import MemoryStore
from payrouter.store.redis import RedisStore

__all__ = ["MemoryStore", "RedisStore", "Store", "StoreError"]
