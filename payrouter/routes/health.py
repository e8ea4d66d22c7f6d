"""``GET /healthz``: is the store reachable, does the chain answer, can the gas wallet pay?"""

from __future__ import annotations

import asyncio
import os

from starlette.requests import Request
from starlette.responses import JSONResponse

from payrouter.chain import ChainError
from payrouter.facilitator import LocalFacilitator
from payrouter.gas_funds import gas_funds, worst
from payrouter.http_errors import error_response
from payrouter.services import Services
from payrouter.store import StoreError

__all__ = ["healthz", "model_health"]


async def healthz(request: Request) -> JSONResponse:
    """200 with component states when healthy, 503 naming what is down; ``worker`` is the pid of
    the process that answered (one of ``payrouter serve --workers N``).

    With a local facilitator, ``checks.gas_wallet`` is the least funded gas wallet's state:
    ``ok``, ``low`` (fewer than `payrouter.gas_funds.LOW_SETTLEMENTS` settlements left: still 200)
    or ``empty`` (not one settlement: 503); ``gas`` lists every gas wallet
    (`payrouter.gas_funds.GasFunds.as_json`).
    """
    services: Services = request.state.services
    checks: dict[str, str] = {}
    gas: dict[str, object] = {}
    try:
        await asyncio.wait_for(services.store.ping(), 2.0)
        checks["store"] = "ok"
    except (StoreError, TimeoutError) as exc:
        checks["store"] = f"down: {exc.__class__.__name__}"
    if services.chain is not None:
        try:
            await asyncio.wait_for(services.chain.chain_id(), 2.0)
            checks["chain"] = "ok"
        except (ChainError, TimeoutError) as exc:
            checks["chain"] = f"down: {exc.__class__.__name__}"
    if services.chain is not None and isinstance(services.facilitator, LocalFacilitator):
        try:
            addresses = [sender.address for sender in services.facilitator.gas_pool.senders]
            funds = await asyncio.wait_for(gas_funds(services.chain, addresses), 2.0)
            checks["gas_wallet"] = worst(funds)
            gas = {"gas": [f.as_json() for f in funds]}
        except (ChainError, TimeoutError) as exc:
            checks["gas_wallet"] = f"unknown: {exc.__class__.__name__}"
    # a low gas wallet still settles: it is reported, not a reason to take the instance out
    healthy = all(v in ("ok", "low") for v in checks.values())
    body = {"status": "ok" if healthy else "degraded", "checks": checks, "worker": os.getpid(), **gas}
    return JSONResponse(body, 200 if healthy else 503)


async def model_health(request: Request) -> JSONResponse:
    """Per model: circuit breaker, error rate and latency averages (shared by all instances)."""
    services: Services = request.state.services
    try:
        return JSONResponse({"models": await services.health.snapshot()})
    except StoreError as exc:
        return error_response(503, f"store unavailable: {exc.__class__.__name__}", "server_error")
