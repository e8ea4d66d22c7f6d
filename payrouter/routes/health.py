"""``GET /healthz``: is the store reachable, and does the chain answer?"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse

from payrouter.chain import ChainError
from payrouter.http_errors import error_response
from payrouter.services import Services
from payrouter.store import StoreError

__all__ = ["healthz", "model_health"]


async def healthz(request: Request) -> JSONResponse:
    """200 with component states when healthy, 503 naming what is down."""
    services: Services = request.state.services
    checks: dict[str, str] = {}
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
    healthy = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if healthy else "degraded", "checks": checks}, 200 if healthy else 503)


async def model_health(request: Request) -> JSONResponse:
    """Per model: circuit breaker, error rate and latency averages (shared by all instances)."""
    services: Services = request.state.services
    try:
        return JSONResponse({"models": await services.health.snapshot()})
    except StoreError as exc:
        return error_response(503, f"store unavailable: {exc.__class__.__name__}", "server_error")
