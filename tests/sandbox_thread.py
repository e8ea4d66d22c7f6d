"""Run payrouter's sandbox on a background event loop, for synchronous tests."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from payrouter.sandbox.dev import EXAMPLE_TABLE, Sandbox, sandbox

T = TypeVar("T")


class LoopThread:
    """An asyncio loop in a daemon thread; `run` executes a coroutine on it and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@contextmanager
def sandbox_in_thread(
    table: Path = EXAMPLE_TABLE,
    agents: int = 4,
    redis_url: str | None = None,
    namespace: str = "payrouter-test",
    chain_id: int = 31337,
    claim_poll: float = 0.0,
    reconcile_interval: float = 0.0,
) -> Iterator[Sandbox]:
    """The sandbox on an event loop of its own. Its claimer and reconciler are off by default:
    a test runs their passes itself, where it means to (a pass a background loop happened to
    run in the middle of a test made its outcome depend on timing)."""
    runner = LoopThread()
    manager = sandbox(
        table,
        agents=agents,
        redis_url=redis_url,
        namespace=namespace,
        chain_id=chain_id,
        claim_poll=claim_poll,
        reconcile_interval=reconcile_interval,
    )
    box = runner.run(manager.__aenter__())
    try:
        yield box
    finally:
        runner.run(manager.__aexit__(None, None, None))
        runner.stop()
