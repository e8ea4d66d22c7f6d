"""The official x402 facilitator (x402Facilitator + FacilitatorWeb3Signer) served over HTTP.

x402 ships the facilitator logic but no HTTP server for it; this is the small server the
x402 examples describe: POST /verify, POST /settle, GET /supported, with bearer auth.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from x402 import x402Facilitator
from x402.mechanisms.evm import FacilitatorWeb3Signer
from x402.mechanisms.evm.batch_settlement.authorizer_signer import LocalAuthorizerSigner
from x402.mechanisms.evm.batch_settlement.facilitator import BatchSettlementEvmFacilitator
from x402.mechanisms.evm.exact import register_exact_evm_facilitator
from x402.schemas.helpers import parse_payment_payload, parse_payment_requirements


def facilitator_app(
    private_key: str,
    rpc_url: str,
    network: str,
    token: str,
    *,
    channels: bool = False,
    authorizer_key: str | None = None,
) -> tuple[Starlette, dict[str, int]]:
    """The app, and counters of the calls it answered.

    ``channels`` registers the official batch-settlement facilitator too; with
    ``authorizer_key`` it holds a receiver authorizer (advertised in ``/supported``, signing
    claims and refunds sent without signatures).
    """
    facilitator = x402Facilitator()
    signer = FacilitatorWeb3Signer(private_key=private_key, rpc_url=rpc_url)
    register_exact_evm_facilitator(facilitator, signer, networks=network)
    if channels:
        authorizer = LocalAuthorizerSigner(authorizer_key) if authorizer_key else None
        facilitator.register([network], BatchSettlementEvmFacilitator(signer, authorizer))
    calls = {"verify": 0, "settle": 0, "supported": 0, "unauthorized": 0}

    def authorized(request: Request) -> bool:
        ok = request.headers.get("authorization") == f"Bearer {token}"
        if not ok:
            calls["unauthorized"] += 1
        return ok

    async def parse(request: Request) -> tuple[Any, Any]:
        body = await request.json()
        payload = parse_payment_payload(body["paymentPayload"])
        requirements = parse_payment_requirements(body["x402Version"], body["paymentRequirements"])
        return payload, requirements

    def endpoint(name: str) -> Callable[[Request], Awaitable[JSONResponse]]:
        """POST /verify or /settle: the facilitator method of that name, behind the bearer token."""

        async def handle(request: Request) -> JSONResponse:
            if not authorized(request):
                return JSONResponse({"error": "unauthorized"}, 401)
            calls[name] += 1
            result = await getattr(facilitator, name)(*await parse(request))
            return JSONResponse(result.model_dump(by_alias=True, exclude_none=True))

        return handle

    verify, settle = endpoint("verify"), endpoint("settle")

    async def supported(request: Request) -> JSONResponse:
        calls["supported"] += 1
        return JSONResponse(facilitator.get_supported().model_dump(by_alias=True, exclude_none=True))

    app = Starlette(
        routes=[
            Route("/verify", verify, methods=["POST"]),
            Route("/settle", settle, methods=["POST"]),
            Route("/supported", supported, methods=["GET"]),
        ]
    )
    return app, calls
