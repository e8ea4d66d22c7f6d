# mypy: disable-error-code="arg-type,no-untyped-call"
"""A resource protected by the official x402 PaymentMiddlewareASGI with its in-process facilitator."""

from __future__ import annotations

# mypy: disable-error-code="arg-type,no-untyped-call"
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from x402 import x402Facilitator
from x402.http import PaymentOption
from x402.http.middleware.fastapi import PaymentMiddlewareASGI
from x402.http.types import RouteConfig
from x402.mechanisms.evm import FacilitatorWeb3Signer
from x402.mechanisms.evm.exact import ExactEvmServerScheme, register_exact_evm_facilitator
from x402.server import x402ResourceServer


def official_app(rpc_url: str, facilitator_key: str, network: str, asset: str, pay_to: str, amount: int) -> Any:
    facilitator = x402Facilitator()
    register_exact_evm_facilitator(
        facilitator, FacilitatorWeb3Signer(private_key=facilitator_key, rpc_url=rpc_url), networks=network
    )
    server = x402ResourceServer(facilitator)
    server.register(network, ExactEvmServerScheme())
    price = {"amount": str(amount), "asset": asset, "extra": {"name": "USD Coin", "version": "2"}}
    routes = {
        "GET /weather": RouteConfig(
            accepts=PaymentOption(scheme="exact", pay_to=pay_to, network=network, price=price, max_timeout_seconds=300),
            description="weather",
            mime_type="application/json",
        )
    }

    async def weather(request: Request) -> JSONResponse:
        return JSONResponse({"forecast": "sunny", "temperature_c": 21})

    return Starlette(
        routes=[Route("/weather", weather, methods=["GET"])],
        middleware=[Middleware(PaymentMiddlewareASGI, routes=routes, server=server)],
    )
