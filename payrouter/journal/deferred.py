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


@dataclass(frozen=True, slots=True)
class _Write:
    record: PaymentRecord
    expected: tuple[str, ...]
    answer: bytes | None
    answer_ttl: int
    drop_answer: bool
    owner_was: str | None


@dataclass(slots=True)
class DeferredWrites:
    """Journal writes that failed while the store was down, retried until they land.

    Writes to one record land in the order they were made (a later one usually expects the
    state an earlier one writes); `holds` tells a writer to queue behind them. A write that
    gives up (after ``horizon`` seconds) is logged whole at ERROR: the log is the record of
    last resort.
    """

    journal: Journal
    horizon: float = 600.0
    _queues: dict[str, list[_Write]] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def holds(self, record_id: str) -> bool:
        """Writes to ``record_id`` are waiting: a new one must queue behind them."""
        return record_id in self._queues

    def schedule(
        self,
        record: PaymentRecord,
        expected: Iterable[str],
        answer: bytes | None,
        answer_ttl: int,
        drop_answer: bool = False,
        owner_was: str | None = None,
    ) -> None:
        """Retry ``journal.advance(record, ...)`` in the background, after any earlier
        deferred write to the same record."""
        write = _Write(record, tuple(expected), answer, answer_ttl, drop_answer, owner_was)
        queue = self._queues.get(record.id)
        if queue is not None:
            queue.append(write)
            return
        self._queues[record.id] = [write]
        task = asyncio.get_running_loop().create_task(self._drain_queue(record.id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain_queue(self, record_id: str) -> None:
        queue = self._queues[record_id]
        try:
            while queue:
                await self._retry(queue[0])
                queue.pop(0)
        finally:
            del self._queues[record_id]

    async def _retry(self, w: _Write) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.horizon
        delay = 0.05
        while True:
            try:
                written, state = await self.journal.advance(
                    w.record, w.expected, w.answer, w.answer_ttl, w.drop_answer, w.owner_was
                )
                if not written:
                    log.warning("deferred write of %s as %s refused: it is %s now", w.record.id, w.record.state, state)
                return
            except StoreError as exc:
                if loop.time() >= deadline:
                    log.error("journal write lost after %.0f s (%s): %s", self.horizon, exc, w.record.to_fields())
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for pending writes (on shutdown)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    @property
    def pending(self) -> int:
        """Records with writes still waiting for the store."""
        return len(self._queues)
