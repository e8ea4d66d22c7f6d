# mypy: disable-error-code="arg-type,no-untyped-call"
"""A resource protected by the official x402 PaymentMiddlewareASGI with its in-process facilitator."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from x402 import x402Facilitator
from x402.http import PaymentOption
from x402.http.middleware.fastapi import PaymentMiddlewareASGI
from x402.http.types import RouteConfig
from x402.mechanisms.evm import FacilitatorWeb3Signer
from x402.mechanisms.evm.exact import ExactEvmServerScheme, register_exact_evm_facilitator
from x402.server import x402ResourceServer


def official_app(
    rpc_url: str,
    facilitator_key: str,
    network: str,
    asset: str,
    pay_to: str,
    amount: int,
    endpoint: tuple[str, str, Callable[[Request], Awaitable[Response]]] | None = None,
) -> Any:
    """``endpoint`` = (method, path, handler) behind the middleware; default ``GET /weather``."""
    facilitator = x402Facilitator()
    register_exact_evm_facilitator(
        facilitator, FacilitatorWeb3Signer(private_key=facilitator_key, rpc_url=rpc_url), networks=network
    )
    server = x402ResourceServer(facilitator)
    server.register(network, ExactEvmServerScheme())

    async def weather(request: Request) -> Response:
        return JSONResponse({"forecast": "sunny", "temperature_c": 21})

    method, path, handler = endpoint or ("GET", "/weather", weather)
    price = {"amount": str(amount), "asset": asset, "extra": {"name": "USD Coin", "version": "2"}}
    routes = {
        f"{method} {path}": RouteConfig(
            accepts=PaymentOption(scheme="exact", pay_to=pay_to, network=network, price=price, max_timeout_seconds=300),
            description=path,
            mime_type="application/json",
        )
    }
    return Starlette(
        routes=[Route(path, handler, methods=[method])],
        middleware=[Middleware(PaymentMiddlewareASGI, routes=routes, server=server)],
    )
