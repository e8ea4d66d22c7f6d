"""The resources one running app shares, built in the lifespan and handed to requests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp

from payrouter.chain import ChainClient
from payrouter.facilitator import Facilitator
from payrouter.journal import DeferredWrites, Journal
from payrouter.quote_seal import QuoteSeal
from payrouter.quoting import Quoter
from payrouter.reconciler import Resolver
from payrouter.store import Store
from payrouter.upstream.health import HealthTracker
from payrouter.upstream.pool import UpstreamPool
from payrouter.x402.unpaid_limit import UnpaidLimit
from pricing import PriceTable

if TYPE_CHECKING:
    from payrouter.x402.schemes.base import Scheme

__all__ = ["Services"]


@dataclass(slots=True)
class Services:
    """Everything a request handler may need; one instance per app."""

    table: PriceTable
    quoter: Quoter
    store: Store
    facilitator: Facilitator
    upstreams: UpstreamPool
    health: HealthTracker
    http: aiohttp.ClientSession
    chain: ChainClient | None
    public_url: str | None
    max_body_bytes: int
    journal: Journal
    deferred: DeferredWrites
    resolver: Resolver
    quotes: QuoteSeal
    # per-client limit on unpaid requests (None: unlimited)
    unpaid_limit: UnpaidLimit | None = None
    answer_ttl: int = 7 * 24 * 3600
    # the offered payment schemes by name, in the price table's preference order
    schemes: dict[str, Scheme] = field(default_factory=dict)
