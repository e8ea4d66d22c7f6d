"""Server-side state of x402 ``batch-settlement`` payment channels.

Per channel: what was charged, the latest voucher accepted, a mirror of the contract, and the
one request in flight. `RedisChannelStore` is the real one (shared by every instance);
`MemoryChannelStore` serves a single process without Redis (development only).
"""

from payrouter.channels.memory import MemoryChannelStore
from payrouter.channels.redis import RedisChannelStore
from payrouter.channels.state import MAX_TTL_MS, ChannelState, InvalidCharge, Reserved, ReserveOutcome
from payrouter.channels.store import ChannelStore, open_channel_store

__all__ = [
    "MAX_TTL_MS",
    "ChannelState",
    "ChannelStore",
    "InvalidCharge",
    "MemoryChannelStore",
    "RedisChannelStore",
    "ReserveOutcome",
    "Reserved",
    "open_channel_store",
]
