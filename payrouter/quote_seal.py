"""Self-verifying quotes: the 402 carries its quote, sealed, and the paid retry brings it back.

An unpaid request costs the store nothing: instead of keeping each quote in Redis until its
payment may arrive, every offer carries ``extra.quote``, a token holding the route and its
price, bound to the request's digest and an expiry by an HMAC under a server key. x402 v2
clients echo the offer they accept (``accepted``), so the paid retry is checked without a
store read: a token that is not ours, not for this request, tampered with or expired is no
quote. A payment without a token (x402 v1, or a client that rebuilt ``accepted``) is priced
afresh and must match that price.

Keys rotate by epoch (a UTC day): the first instance to need an epoch's key creates it in the
store (set-if-absent), every instance reads the same one, and a token is accepted under its
epoch's key or the previous one, so quotes in flight survive a rotation. A token's lifetime is
at most ``max_timeout_seconds`` (at most a day), so the previous epoch's key is enough.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import replace
from typing import Any

from payrouter.quoting import PricedRoute, Quoter
from payrouter.routing import Candidate, RouteDecision
from payrouter.store import Store, StoreError
from payrouter.x402.wire import compact_json
from pricing import PricingError, Quote

__all__ = ["EPOCH_SECONDS", "QuoteSeal"]

EPOCH_SECONDS = 86_400
_TAG_BYTES = 16  # 128-bit tags: forging one is out of reach
_MAX_TOKEN = 4096
_PREFIX = "q1"
_CANDIDATES = 8


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class QuoteSeal:
    """Seals priced routes into their offers and opens them again on the paid retry.

    Args:
        store: where the epoch keys live (shared by every instance and worker).
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._keys: dict[int, bytes] = {}

    def __repr__(self) -> str:  # the keys are secrets
        return f"QuoteSeal(epochs={sorted(self._keys)})"

    async def _key(self, epoch: int, create: bool) -> bytes | None:
        key = self._keys.get(epoch)
        if key is not None:
            return key
        name = f"quote-key:{epoch}"
        ttl = 3 * EPOCH_SECONDS  # its epoch, the next (tokens signed late), and slack
        if create:
            # whoever comes first sets the epoch's key; everyone then reads that one
            await self._store.claim(name, secrets.token_hex(32), ttl)
        raw = await self._store.get(name)
        if raw is None:
            return None
        key = bytes.fromhex(raw.decode())
        self._keys[epoch] = key
        for old in [e for e in self._keys if e < epoch - 1]:
            del self._keys[old]
        return key

    @staticmethod
    def _tag(key: bytes, epoch: int, digest: str, body: str) -> bytes:
        message = f"{epoch}.{digest}.{body}".encode()
        return hmac.new(key, message, hashlib.sha256).digest()[:_TAG_BYTES]

    async def seal(self, digest: str, priced: PricedRoute, now: float | None = None) -> PricedRoute:
        """``priced`` with every offer's ``extra.quote`` set: a token binding its route and price
        to the request ``digest`` until the quote's lifetime ends.

        Raises:
            StoreError: the epoch's key could not be read or created.
        """
        now = time.time() if now is None else now
        epoch = int(now) // EPOCH_SECONDS
        key = await self._key(epoch, create=True)
        if key is None:
            raise StoreError("the quote key could not be created")
        d, q = priced.decision, priced.quote
        fields = {
            "e": int(now) + priced.requirements.max_timeout_seconds,
            "m": d.model,
            "i": d.input_tokens,
            "o": d.output_tokens,
            "f": list(d.fallbacks),
            "r": d.reason,
            "s": d.strategy,
            "c": q.upstream_cost,
            "a": q.amount,
            "u": d.rule,
            "v": d.arm,
            # the best few candidates, for the request log's "why": a paid call is often served by
            # another worker than the one that quoted it
            "k": [[c.model, c.quality, c.price, c.latency_ms, c.output_tokens] for c in d.candidates[:_CANDIDATES]],
        }
        body = _b64(compact_json(fields))
        token = f"{_PREFIX}.{epoch}.{body}.{_b64(self._tag(key, epoch, digest, body))}"
        requirements = priced.requirements.with_extra({"quote": token})
        return replace(priced, requirements=requirements)

    async def open(self, token: Any, digest: str, quoter: Quoter, now: float | None = None) -> PricedRoute | None:
        """The quote ``token`` seals for the request ``digest``, its offer rebuilt under the
        current price table (so terms the table no longer offers do not match); None when the
        token is not a live quote of ours for this request.

        Raises:
            StoreError: the token's epoch key could not be read.
        """
        if not isinstance(token, str) or len(token) > _MAX_TOKEN:
            return None
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != _PREFIX or not parts[1].isdigit():
            return None
        now = time.time() if now is None else now
        epoch, body = int(parts[1]), parts[2]
        if epoch not in (int(now) // EPOCH_SECONDS, int(now) // EPOCH_SECONDS - 1):
            return None
        key = await self._key(epoch, create=False)
        if key is None:
            return None
        try:
            tag = _unb64(parts[3])
            if not hmac.compare_digest(tag, self._tag(key, epoch, digest, body)):
                return None
            fields = json.loads(_unb64(body))
        except (binascii.Error, ValueError):
            return None
        if fields["e"] < now:
            return None
        decision = RouteDecision(
            model=fields["m"],
            output_tokens=fields["o"],
            input_tokens=fields["i"],
            fallbacks=tuple(fields["f"]),
            reason=fields["r"],
            strategy=fields["s"],
            candidates=tuple(Candidate(*c) for c in fields.get("k", ())),
            rule=fields.get("u", ""),
            arm=fields.get("v", ""),
        )
        quote = Quote(
            model_id=decision.model,
            input_tokens=decision.input_tokens,
            output_tokens=decision.output_tokens,
            upstream_cost=fields["c"],
            amount=fields["a"],
        )
        try:
            requirements = quoter.requirements(decision, quote)
        except PricingError:  # the model left the table since
            return None
        return PricedRoute(decision=decision, quote=quote, requirements=requirements.with_extra({"quote": token}))
