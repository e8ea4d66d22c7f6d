"""The feedback writer stops, whatever it is doing when shutdown comes.

redis-py can lose a cancellation that arrives in the middle of a command: the writer used to
carry on and wait for work forever, and the server's shutdown waited with it. Here the writer
runs against the real Redis with work always queued, and is stopped at many different moments.
"""

from __future__ import annotations

import asyncio
import random
import time

from payrouter.feedback.record import FeedbackRecorder
from payrouter.store import RedisStore
from tests.redis_keys import REDIS_URL, run_token


async def test_stop_returns_at_any_moment_of_a_write() -> None:
    namespace = f"feedback-stop-{run_token()}"
    store = RedisStore(REDIS_URL, namespace)
    rng = random.Random(7)
    try:
        for attempt in range(60):
            recorder = FeedbackRecorder(store, ttl=30)
            recorder.start()
            for i in range(40):
                recorder.note(f"c{attempt}-{i}", "0xpayer", "gpt-4o-mini", "", "", "", f"prompt {i}")
            await asyncio.sleep(0.05 + rng.random() * 0.01)  # the writer is mid-batch now
            started = time.monotonic()
            await asyncio.wait_for(recorder.stop(), 5)
            assert time.monotonic() - started < 3
    finally:
        keys = [key async for key in store._redis.scan_iter(match=f"{namespace}:*")]
        if keys:
            await store._redis.delete(*keys)
        await store.close()
