"""The `Journal` protocol: where every payment's record lives, and how it moves."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

from payrouter.journal.record import PaymentRecord
from payrouter.store.base import Written

__all__ = ["Exposure", "Journal", "Opened"]


@dataclass(frozen=True, slots=True)
class Exposure:
    """A stream's claim on the unconfirmed-exposure budget.

    Attributes:
        amount: atomic units at risk (the quote).
        per_payer, total: the operator's limits in atomic units.
        expires_ms: when the entry stops counting even if nobody removes it (a crashed worker).
    """

    amount: int
    per_payer: int
    total: int
    expires_ms: int


@dataclass(frozen=True, slots=True)
class Opened:
    """What `Journal.open` found.

    Attributes:
        outcome: ``new`` (this caller now owns the record), ``existing`` (the payment was
            presented before: ``record`` is the stored one) or ``debtor`` (a stream refused:
            the payer has an owed or unpaid record; nothing was written).
        held: a new stream over the exposure limits: it must settle before its first byte.
    """

    outcome: Literal["new", "existing", "debtor"]
    record: PaymentRecord
    held: bool = False


class Journal(Protocol):
    """Durable payment records with atomic, owner-checked transitions.

    A record is never deleted; the ledger of settled payments is derived from it. Writes carry
    the whole record, so a record the store lost (a Redis restart without persistence) is
    written again by the next transition of the worker that holds it.
    """

    async def open(self, record: PaymentRecord, exposure: Exposure | None = None) -> Opened:
        """Create ``record`` (state ``claimed``) unless its payment already has one.

        A ``released`` record is taken over (a new attempt: ``attempts`` + 1, the new owner),
        unless its settlement reverted after it verified (``existing``: one signature must not
        buy model calls and our gas over and over).
        With ``exposure`` (a stream): a payer in debt is refused (``debtor``), and the amount
        is reserved against the limits, or ``held`` when it does not fit.
        """
        ...

    async def advance(
        self,
        record: PaymentRecord,
        expected: Iterable[str],
        answer: bytes | None = None,
        answer_ttl: int = 0,
        drop_answer: bool = False,
        owner_was: str | None = None,
    ) -> tuple[bool, str]:
        """Write ``record`` if the stored one is held by ``record.owner`` in one of the
        ``expected`` states (or in ``record.state`` already: a retried write), or is missing.

        ``answer`` is kept for ``answer_ttl`` seconds; ``drop_answer`` deletes a kept one.
        ``owner_was``: the owner to check instead of ``record.owner`` (a take-over).
        Returns ``(written, stored state)``.
        """
        ...

    async def send_advance(
        self, record: PaymentRecord, expected: Iterable[str], answer: bytes | None = None, answer_ttl: int = 0
    ) -> Written[tuple[bool, str]]:
        """`advance`, returning once the write has left this process (see
        `payrouter.store.Written`); ``reply()`` gives what `advance` would have returned or
        raised."""
        ...

    async def discard(self, record: PaymentRecord) -> bool:
        """Delete a record this owner opened (first attempt, ``claimed`` or ``serving``) whose
        payment failed verification or whose model call failed before anything was broadcast:
        nothing was delivered and nothing can have moved, so it leaves no trace (fresh nonces
        cost nothing; keeping a record of each for ever would). True when deleted.
        """
        ...

    async def get(self, record_id: str) -> PaymentRecord | None:
        """The record, or None."""
        ...

    async def answer(self, record_id: str) -> bytes | None:
        """The kept answer of a record, or None (never kept, dropped or expired)."""
        ...

    async def open_records(self, limit: int = 1000) -> list[PaymentRecord]:
        """Records in an open state (oldest update first)."""
        ...

    async def records(
        self, start_ms: int = 0, end_ms: int | None = None, limit: int = 1000, settled: bool = False
    ) -> list[PaymentRecord]:
        """Records created in ``[start_ms, end_ms]`` (with ``settled``: settled in it), oldest first."""
        ...

    async def debts(self, payer: str) -> int:
        """How many owed or unpaid records ``payer`` has."""
        ...

    async def exposure(self) -> tuple[int, int]:
        """``(unconfirmed stream exposure now, the highest ever reserved)`` in atomic units."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
