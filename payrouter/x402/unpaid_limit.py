"""A per-client limit on unpaid work: quotes handed out and payments refused.

Every 402 costs routing and pricing over the whole catalog. A client that pays is not limited:
each accepted payment gives back the token its quote took. A client that only asks (or sends
payments that are refused) draws down a bucket of ``burst`` tokens refilled at ``rate`` a
second, and is answered 429 with ``Retry-After`` when it is empty.

The buckets live in the process (no store round trip on the hot path), bounded in number (the
least recently seen client is forgotten first), so the limit is per worker: N workers allow up
to N times ``rate`` to one client. Clients are told apart by the connection's address
(``scope["client"]``); behind a proxy, run uvicorn with ``forwarded_allow_ips`` so that is the
client's.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict

from starlette.types import Scope

from payrouter.http_errors import error_bytes

__all__ = ["UnpaidLimit", "client_of", "over_limit"]


def client_of(scope: Scope) -> str:
    """The address a request came from (``"-"`` when the server does not say)."""
    client = scope.get("client")
    return str(client[0]) if client else "-"


class UnpaidLimit:
    """Token buckets, one per client address.

    Args:
        rate: tokens refilled per second (unpaid requests a client may sustain).
        burst: the bucket's size (unpaid requests a client may make at once).
        max_clients: buckets kept; beyond it the least recently seen client is forgotten.
    """

    def __init__(self, rate: float, burst: int, max_clients: int = 100_000) -> None:
        if rate <= 0 or burst < 1 or max_clients < 1:
            raise ValueError("rate must be > 0, burst and max_clients >= 1")
        self.rate = rate
        self.burst = float(burst)
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, at)

    def _level(self, client: str, now: float) -> float:
        tokens, at = self._buckets.get(client, (self.burst, now))
        return min(self.burst, tokens + (now - at) * self.rate)

    def _store(self, client: str, tokens: float, now: float) -> None:
        self._buckets[client] = (tokens, now)
        self._buckets.move_to_end(client)
        if len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)

    def take(self, client: str, now: float | None = None) -> float:
        """Take a token for one unpaid request of ``client``: 0.0 when it may go ahead, else the
        seconds until a token is free (nothing is taken then)."""
        now = time.monotonic() if now is None else now
        tokens = self._level(client, now)
        if tokens < 1.0:
            self._store(client, tokens, now)
            return (1.0 - tokens) / self.rate
        self._store(client, tokens - 1.0, now)
        return 0.0

    def give_back(self, client: str, now: float | None = None) -> None:
        """``client`` paid: the token its quote took is returned (up to the bucket's size)."""
        now = time.monotonic() if now is None else now
        if client in self._buckets:
            self._store(client, min(self.burst, self._level(client, now) + 1.0), now)


def over_limit(
    limit: UnpaidLimit | None, scope: Scope, why: str = ""
) -> tuple[int, bytes, list[tuple[bytes, bytes]]] | None:
    """Take a token for the unpaid request ``scope``; None when it may go ahead, else the 429
    to answer ``(status, body, headers)``, its message prefixed by ``why``."""
    wait = 0.0 if limit is None else limit.take(client_of(scope))
    if wait <= 0:
        return None
    retry = max(1, math.ceil(wait))
    message = f"too many unpaid requests from this address: pay for a quote you hold, or retry in {retry} s"
    body = error_bytes(f"{why}; {message}" if why else message, "rate_limit_error")
    return 429, body, [(b"content-type", b"application/json"), (b"retry-after", str(retry).encode())]
