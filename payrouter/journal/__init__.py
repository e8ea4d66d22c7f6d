"""The payment journal: one durable record per payment, from claim to its final state.

`RedisJournal` is the real one (shared by every instance); `MemoryJournal` serves a single
process without Redis (development only). The ledger, receipts for replays and the
reconciler all read from it.
"""

from payrouter.journal.base import Exposure, Journal, Opened
from payrouter.journal.deferred import DeferredWrites
from payrouter.journal.memory import MemoryJournal
from payrouter.journal.record import OPEN_STATES, PaymentRecord, State, StoredAnswer, now_ms
from payrouter.journal.redis import RedisJournal

__all__ = [
    "OPEN_STATES",
    "DeferredWrites",
    "Exposure",
    "Journal",
    "MemoryJournal",
    "Opened",
    "PaymentRecord",
    "RedisJournal",
    "State",
    "StoredAnswer",
    "now_ms",
]
