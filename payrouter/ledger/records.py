"""Reading records out of the journal: time bounds and paging."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from payrouter.journal import Journal, PaymentRecord

__all__ = ["fetch_records", "parse_time"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NUMBER = re.compile(r"^(\d+)(\.\d+)?$")
# 13 digits of seconds would be the year 33658: a number that long is milliseconds.
_MS_DIGITS = 13


def parse_time(text: str) -> int:
    """Unix milliseconds of a point in time given on the command line.

    Accepted: ISO 8601 (``2025-05-01``, ``2025-05-01T12:30:00``, ``...Z`` or ``...+02:00``;
    UTC unless it names an offset), or a unix timestamp in seconds (``1746100000``,
    fractions allowed), or in milliseconds when it has 13 digits or more.

    Raises:
        ValueError: anything else (the message names the accepted forms).
    """
    value = text.strip()
    number = _NUMBER.match(value)
    if number:
        if len(number.group(1)) >= _MS_DIGITS and number.group(2) is None:
            return int(value)
        return int(Decimal(value) * 1000)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"not a time: {text!r} (use ISO 8601 like 2025-05-01 or 2025-05-01T12:00:00Z, or unix seconds)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(milliseconds=1)


async def fetch_records(
    journal: Journal, start_ms: int = 0, end_ms: int | None = None, settled: bool = False, page: int = 1000
) -> list[PaymentRecord]:
    """Every record created in ``[start_ms, end_ms]`` (with ``settled``: settled in it), oldest first.

    Pages through `Journal.records`, which has a limit but no offset: each page starts at the
    last time seen, skipping the records already read at that millisecond (a page wholly taken
    by one millisecond is read again, twice as large).

    Raises:
        StoreError: the journal cannot be read.
    """
    out: list[PaymentRecord] = []
    seen: set[str] = set()
    start = start_ms
    size = page
    while True:
        batch = await journal.records(start, end_ms, limit=size, settled=settled)
        new = [r for r in batch if r.id not in seen]
        if not new:
            if len(batch) < size:
                return out
            size *= 2
            continue
        out += new
        start = _time_of(new[-1], settled)
        # only the ids at the next page's first millisecond can come back
        seen = {r.id for r in batch if _time_of(r, settled) == start}
        size = page


def _time_of(record: PaymentRecord, settled: bool) -> int:
    return record.settled_at if settled else record.created_at
