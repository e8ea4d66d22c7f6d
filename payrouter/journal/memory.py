"""The journal in a dict: one process, development only (state is lost on exit)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import replace

from payrouter.journal.base import Exposure, Opened
from payrouter.journal.record import DEBT_STATES, EXPOSED_STATES, OPEN_STATES, PaymentRecord, State, now_ms
from payrouter.store.base import Written

__all__ = ["MemoryJournal"]

# A payment whose settlement reverted after it verified is not served again: one signature
# must not buy model calls (and our gas) over and over.
_REVERTED = "invalid_exact_evm_transaction_failed"
_UNSERVED = (State.CLAIMED, State.SERVING)


class MemoryJournal:
    """`Journal` for a single process (the same rules as `RedisJournal`)."""

    def __init__(self) -> None:
        self._records: dict[str, PaymentRecord] = {}
        self._answers: dict[str, tuple[bytes, float]] = {}
        self._exposure: dict[str, tuple[str, int, int]] = {}  # id -> (payer, amount, expires_ms)
        self._high = 0

    def _exposed(self, payer: str) -> tuple[int, int]:
        now = now_ms()
        self._exposure = {k: v for k, v in self._exposure.items() if v[2] > now}
        total = sum(v[1] for v in self._exposure.values())
        mine = sum(v[1] for v in self._exposure.values() if v[0] == payer)
        return mine, total

    async def open(self, record: PaymentRecord, exposure: Exposure | None = None) -> Opened:
        current = self._records.get(record.id)
        if current is not None and (current.state != State.RELEASED or current.reason == _REVERTED):
            return Opened("existing", replace(current))
        if exposure is not None and await self.debts(record.payer):
            return Opened("debtor", record)
        if current is not None:
            record = replace(record, attempts=current.attempts + 1, created_at=current.created_at)
        record = replace(record, state=State.CLAIMED)
        self._records[record.id] = record
        held = False
        if exposure is not None:
            mine, total = self._exposed(record.payer)
            if mine + exposure.amount <= exposure.per_payer and total + exposure.amount <= exposure.total:
                self._exposure[record.id] = (record.payer, exposure.amount, exposure.expires_ms)
                self._high = max(self._high, total + exposure.amount)
            else:
                held = True
        return Opened("new", replace(record), held)

    async def advance(
        self,
        record: PaymentRecord,
        expected: Iterable[str],
        answer: bytes | None = None,
        answer_ttl: int = 0,
        drop_answer: bool = False,
        owner_was: str | None = None,
    ) -> tuple[bool, str]:
        current = self._records.get(record.id)
        if current is not None and (
            current.owner != (owner_was or record.owner)
            or (current.state not in set(expected) and current.state != record.state)
        ):
            return False, current.state
        self._records[record.id] = replace(record)
        if record.state not in EXPOSED_STATES:
            self._exposure.pop(record.id, None)
        if drop_answer:
            self._answers.pop(record.id, None)
        if answer is not None:
            self._answers[record.id] = (answer, time.monotonic() + answer_ttl)
        return True, record.state

    async def send_advance(
        self, record: PaymentRecord, expected: Iterable[str], answer: bytes | None = None, answer_ttl: int = 0
    ) -> Written[tuple[bool, str]]:
        return Written.done(await self.advance(record, expected, answer, answer_ttl))

    async def discard(self, record: PaymentRecord) -> bool:
        current = self._records.get(record.id)
        if current is None or current.owner != record.owner or current.state not in _UNSERVED or current.attempts != 1:
            return False
        del self._records[record.id]
        self._exposure.pop(record.id, None)
        return True

    async def get(self, record_id: str) -> PaymentRecord | None:
        record = self._records.get(record_id)
        return None if record is None else replace(record)

    async def answer(self, record_id: str) -> bytes | None:
        item = self._answers.get(record_id)
        if item is None or item[1] <= time.monotonic():
            return None
        return item[0]

    async def open_records(self, limit: int = 1000) -> list[PaymentRecord]:
        found = sorted((r for r in self._records.values() if r.state in OPEN_STATES), key=lambda r: r.updated_at)
        return [replace(r) for r in found[:limit]]

    async def records(
        self, start_ms: int = 0, end_ms: int | None = None, limit: int = 1000, settled: bool = False
    ) -> list[PaymentRecord]:
        end = end_ms if end_ms is not None else 2**62

        def at(r: PaymentRecord) -> int:
            return r.settled_at if settled else r.created_at

        chosen = [r for r in self._records.values() if (r.state == State.SETTLED or not settled) and start_ms <= at(r)]
        chosen = sorted((r for r in chosen if at(r) <= end), key=lambda r: (at(r), r.id))
        return [replace(r) for r in chosen[:limit]]

    async def debts(self, payer: str) -> int:
        return sum(1 for r in self._records.values() if r.payer == payer and r.state in DEBT_STATES)

    async def exposure(self) -> tuple[int, int]:
        return self._exposed("")[1], self._high

    async def close(self) -> None:
        return None
