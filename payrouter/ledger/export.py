"""Records as CSV rows and JSON objects: every field, in the record's own order."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import fields
from typing import Any, TextIO

from payrouter.journal import PaymentRecord

__all__ = ["export_fields", "record_json", "write_csv", "write_jsonl"]

# The signed authorization: anyone holding it can still submit the transfer while it is valid.
PAYMENT_FIELD = "payment"
# uint256 quantities: strings in JSON, so no reader rounds them to a double.
_BIG_INTS = frozenset({"amount", "upstream_cost", "charged", "valid_before"})


def export_fields(with_payment: bool = False) -> list[str]:
    """The exported columns: `PaymentRecord`'s fields in declaration order, without the
    signed ``payment`` unless ``with_payment``."""
    return [f.name for f in fields(PaymentRecord) if with_payment or f.name != PAYMENT_FIELD]


def record_json(record: PaymentRecord, with_payment: bool = False) -> dict[str, Any]:
    """The record as a JSON object with `export_fields` keys, in order.

    Amounts (and ``valid_before``) are integer strings; other integers (counts, unix-ms
    times) are numbers; ``stream`` is a boolean.
    """
    out: dict[str, Any] = {}
    for name in export_fields(with_payment):
        value = getattr(record, name)
        out[name] = str(value) if name in _BIG_INTS else value
    return out


def write_csv(records: Iterable[PaymentRecord], sink: TextIO, with_payment: bool = False) -> int:
    """Write a header row and one row per record (values as the journal stores them: integers
    as decimal strings, ``stream`` as 1/0), ``\\n``-terminated; returns the number of rows."""
    columns = export_fields(with_payment)
    writer = csv.writer(sink, lineterminator="\n")
    writer.writerow(columns)
    count = 0
    for record in records:
        stored = record.to_fields()
        writer.writerow([stored[name] for name in columns])
        count += 1
    return count


def write_jsonl(records: Iterable[PaymentRecord], sink: TextIO, with_payment: bool = False) -> int:
    """Write one compact `record_json` object per line; returns the number of lines."""
    count = 0
    for record in records:
        sink.write(json.dumps(record_json(record, with_payment), separators=(",", ":")) + "\n")
        count += 1
    return count
