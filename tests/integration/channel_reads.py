"""Read a channel's fields straight from Redis, as another instance's reservation would."""

from __future__ import annotations

import time
from typing import Any

import redis


def fields_once_charged(store: redis.Redis, key: str, charged: int, *fields: str, within: float = 1.0) -> list[Any]:
    """``charged`` and ``fields`` of the channel hash ``key``, read as soon as ``charged`` shows
    the value an answer's receipt named, or as they stand after ``within`` seconds: a caller
    asserts on what it gets. For a server whose Redis traffic crosses a proxy: its charge leaves
    before its answer, but the proxy's hop to Redis may still be under way when the answer
    arrives and the test reads Redis directly."""
    deadline = time.monotonic() + within
    while True:
        stored: list[Any] = list(store.hmget(key, ["charged", *fields]))
        if stored[0] == str(charged).encode() or time.monotonic() > deadline:
            return stored
        time.sleep(0.001)
