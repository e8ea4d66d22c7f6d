"""The payment ledger, derived from the journal: listing, export, revenue summaries, and the
audit of settled records against the chain's token transfers.

Everything here reads; nothing writes a record (``payrouter ledger reconcile`` goes through
`payrouter.reconciler`). Amounts stay integers in atomic units of the asset; USD is only
ever a rendering of them.
"""

from payrouter.ledger.amounts import usd
from payrouter.ledger.audit import AuditReport, Difference, Transfer, audit, compare, transfers_to
from payrouter.ledger.export import export_fields, record_json, write_csv, write_jsonl
from payrouter.ledger.records import fetch_records, parse_time
from payrouter.ledger.summary import Totals, group_key, summarize

__all__ = [
    "AuditReport",
    "Difference",
    "Totals",
    "Transfer",
    "audit",
    "compare",
    "export_fields",
    "fetch_records",
    "group_key",
    "parse_time",
    "record_json",
    "summarize",
    "transfers_to",
    "usd",
    "write_csv",
    "write_jsonl",
]
