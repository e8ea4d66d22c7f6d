"""Journal writes that must not be lost to a store outage, retried until they land."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from payrouter.journal.base import Journal
from payrouter.journal.record import PaymentRecord
from payrouter.store.base import StoreError

__all__ = ["DeferredWrites"]

log = logging.getLogger("payrouter.journal")


@dataclass(slots=True)
class DeferredWrites:
    """Journal writes that failed while the store was down, retried until they land.

    A write that gives up (after ``horizon`` seconds) is logged whole at ERROR, so the log is
    the record of last resort.
    """

    journal: Journal
    horizon: float = 600.0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def schedule(self, record: PaymentRecord, expected: Iterable[str], answer: bytes | None, answer_ttl: int) -> None:
        """Retry ``journal.advance(record, ...)`` in the background."""
        task = asyncio.get_running_loop().create_task(self._retry(record, list(expected), answer, answer_ttl))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _retry(self, record: PaymentRecord, expected: list[str], answer: bytes | None, ttl: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.horizon
        delay = 0.05
        while True:
            try:
                written, state = await self.journal.advance(record, expected, answer, ttl)
                if not written:
                    log.warning("deferred write of %s as %s refused: it is %s now", record.id, record.state, state)
                return
            except StoreError as exc:
                if loop.time() >= deadline:
                    log.error("journal write lost after %.0f s (%s): %s", self.horizon, exc, record.to_fields())
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for pending writes (on shutdown)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    @property
    def pending(self) -> int:
        """Writes still waiting for the store."""
        return len(self._tasks)
