"""One payment's durable record, the states it moves through, and the answer kept with it.

States of an ``exact`` payment (every transition is one atomic write in the store)::

    claimed ──> serving ──> settling ──> settled            the transfer is mined
       │           │           ├──────> pending            broadcast (or maybe), not confirmed yet
       │           │           ├──────> owed               content went out, the transfer failed
       │           │           └──────> released           refused before anything was delivered
       └───────────┴─────────────────> released            verification or the model failed

    pending ──> settled | owed | released | unpaid          resolved from the chain by the reconciler
    owed    ──> settled | unpaid                            collected later, or never collectable
    released ──> claimed                                    the same payment presented again

``released`` is only written when nothing can move any more: we never broadcast the
authorization, or the chain says it is unused and our transaction cannot be mined. ``unpaid``
is a final debt: content was delivered and the authorization can no longer be used
(cancelled, or expired unused). A payer with an ``owed`` or ``unpaid`` record is refused streams.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field, fields, replace
from typing import Any

__all__ = [
    "EXPOSED_STATES",
    "OPEN_STATES",
    "State",
    "StoredAnswer",
    "PaymentRecord",
    "now_ms",
]


class State:
    """The states of a payment record."""

    CLAIMED = "claimed"
    SERVING = "serving"
    SETTLING = "settling"
    SETTLED = "settled"
    PENDING = "pending"
    OWED = "owed"
    RELEASED = "released"
    UNPAID = "unpaid"


# Records the reconciler still has to drive somewhere.
OPEN_STATES = frozenset({State.CLAIMED, State.SERVING, State.SETTLING, State.PENDING, State.OWED})
# States in which a stream's unconfirmed payment counts against the exposure limits.
EXPOSED_STATES = frozenset({State.CLAIMED, State.SERVING, State.SETTLING, State.PENDING})
# States that make a payer a debtor.
DEBT_STATES = frozenset({State.OWED, State.UNPAID})


def now_ms() -> int:
    """Wall-clock milliseconds (record timestamps)."""
    return int(time.time() * 1000)


@dataclass(slots=True)
class PaymentRecord:
    """Everything known about one payment; stored as a flat string map.

    Attributes:
        id: ``exact:<payer>:<nonce>`` (lower-case hex): one record per authorization.
        owner: token of the request (or reconciler) allowed to move it; a write from any other
            owner is refused, so a slow worker cannot overwrite a newer attempt.
        payment: the decoded payment header (the signed authorization), compact JSON: enough to
            settle it later while it is valid.
        fingerprint: digest of ``payment``; a replay must present exactly this payment.
        request: digest of the request the payment was quoted for.
        route: the priced route (`payrouter.quoting.PricedRoute.to_record`) the payment bought.
        amount: the signed amount in atomic units; ``charged`` is what actually moved.
        upstream_cost: atomic units the answering model cost us (actual usage when known).
        delivered: for streams: ``streaming`` (content is going out), ``complete``, ``partial``
            (the client hung up), ``broken`` (the model failed mid-stream), ``cut`` (we stopped
            it: the payment failed), ``held`` (kept for the payer, never sent), ``again`` (being
            served again), or ``""`` (nothing yet); ``complete`` for plain answers.
        reserves: how often a paid stream that did not reach its payer whole was served again.
        tx: the settlement transaction hash, once known.
        reason: the last x402 error reason (why it was released, pending or owed).
    """

    id: str
    scheme: str
    state: str
    owner: str
    payer: str
    pay_to: str
    asset: str
    network: str
    amount: int
    nonce: str
    valid_before: int
    x402_version: int
    payment: str
    fingerprint: str
    request: str
    path: str
    stream: bool
    route: str
    model: str
    attempts: int = 1
    reserves: int = 0
    answered_by: str = ""
    upstream_cost: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    charged: int = 0
    delivered: str = ""
    tx: str = ""
    reason: str = ""
    created_at: int = field(default_factory=now_ms)
    updated_at: int = field(default_factory=now_ms)
    settled_at: int = 0

    def to_fields(self) -> dict[str, str]:
        """The record as the store keeps it (every value a string)."""
        out: dict[str, str] = {}
        for name in _FIELD_NAMES:  # every field is a str, int or bool: no asdict deep copy needed
            value = getattr(self, name)
            out[name] = ("1" if value else "0") if isinstance(value, bool) else str(value)
        return out

    @classmethod
    def from_fields(cls, data: dict[str, str]) -> PaymentRecord:
        """Inverse of `to_fields` (unknown fields are ignored, missing ones take defaults)."""
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                continue
            raw = data[f.name]
            if f.type == "int":
                kwargs[f.name] = int(raw or 0)
            elif f.type == "bool":
                kwargs[f.name] = raw == "1"
            else:
                kwargs[f.name] = raw
        return cls(**kwargs)

    def moved(self, state: str, **changes: Any) -> PaymentRecord:
        """A copy in ``state`` with ``changes`` applied and ``updated_at`` set to now."""
        return replace(self, state=state, updated_at=now_ms(), **changes)

    def payment_object(self) -> dict[str, Any]:
        """The decoded payment header."""
        obj: dict[str, Any] = json.loads(self.payment)
        return obj


_FIELD_NAMES = tuple(f.name for f in fields(PaymentRecord))


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    """A response kept with its payment, so the payer can fetch it again.

    Headers are the handler's own (never a receipt: the receipt is rebuilt from the record).
    """

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def to_bytes(self) -> bytes:
        """Serialised for the store."""
        doc = {"status": self.status, "headers": self.headers, "body": base64.b64encode(self.body).decode()}
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> StoredAnswer:
        """Inverse of `to_bytes`."""
        doc = json.loads(data)
        return cls(int(doc["status"]), [(str(k), str(v)) for k, v in doc["headers"]], base64.b64decode(doc["body"]))

    @classmethod
    def capture(cls, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> StoredAnswer:
        """From an ASGI response (content length and caching headers are set again on replay)."""
        drop = {b"content-length", b"cache-control", b"payment-response", b"x-payment-response"}
        kept = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers if k.lower() not in drop]
        return cls(status, kept, body)

    def asgi_headers(self) -> list[tuple[bytes, bytes]]:
        """The stored headers in ASGI form."""
        return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self.headers]
