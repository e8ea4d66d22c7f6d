"""``GET /v1/models`` and ``POST /v1/quote``: the priced catalog and the free dry run."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from payrouter.chat import InvalidRequest, parse_chat_request, request_digest
from payrouter.http_errors import error_response
from payrouter.routing import ConstraintError, RouteConstraints, RoutingError
from payrouter.routing.constraints import ROUTING_HEADERS
from payrouter.services import Services
from payrouter.x402.requirements import Resource
from payrouter.x402.responses import UNPAID_ERROR
from payrouter.x402.unpaid_limit import over_limit
from pricing import ModelPrice, PriceTable, PricingError, ceil_fraction, usd_to_atomic

__all__ = ["list_models", "quote"]


def _error(status: int, message: str, param: str | None = None) -> JSONResponse:
    return error_response(status, message, "invalid_request_error", param)


def _atomic_per_mtok(usd: Decimal, model: ModelPrice, table: PriceTable) -> str:
    # Marked-up price per million tokens, rounded up to whole atomic units for display.
    exact = usd_to_atomic(usd, table.asset.decimals) * (1 + Fraction(model.markup))
    return str(ceil_fraction(exact))


async def list_models(request: Request) -> JSONResponse:
    """The catalog with list prices (USD per million tokens) and marked-up atomic prices."""
    table: PriceTable = request.state.services.table
    data = [
        {
            "id": m.id,
            "object": "model",
            "owned_by": m.provider,
            "context_window": m.context_window,
            "max_output_tokens": m.max_output_tokens,
            "capabilities": sorted(m.capabilities),
            "quality": m.quality,
            "pricing": {
                "usd_per_mtok": {"input": str(m.input_per_mtok), "output": str(m.output_per_mtok)},
                "markup": str(m.markup),
                "request_fee_usd": str(m.request_fee),
                "min_charge_usd": str(m.min_charge),
                "atomic_per_mtok": {
                    "input": _atomic_per_mtok(m.input_per_mtok, m, table),
                    "output": _atomic_per_mtok(m.output_per_mtok, m, table),
                },
                "request_fee_atomic": str(ceil_fraction(usd_to_atomic(m.request_fee, table.asset.decimals))),
                "min_charge_atomic": str(ceil_fraction(usd_to_atomic(m.min_charge, table.asset.decimals))),
            },
        }
        for m in table.models
    ]
    payment = {"network": table.network, "asset": table.asset.model_dump(), "pay_to": table.pay_to}
    return JSONResponse({"object": "list", "data": data, "payment": payment, "default_model": table.default_model})


async def quote(request: Request) -> Response:
    """Route and price a chat request without running it.

    The offers carry the quote sealed exactly as an unpaid call's 402 does, so a client may pay
    them directly on ``POST /v1/chat/completions`` with the same body.
    """
    services: Services = request.state.services
    refused = over_limit(services.unpaid_limit, request.scope)
    if refused is not None:
        status, body, headers = refused
        return Response(body, status, {k.decode(): v.decode() for k, v in headers})
    body = await request.body()
    if len(body) > services.max_body_bytes:
        return _error(413, f"request body exceeds {services.max_body_bytes} bytes")
    routing_headers = {h: request.headers[h] for h in ROUTING_HEADERS if h in request.headers}
    try:
        chat, raw = parse_chat_request(body)
        digest = request_digest("POST", "/v1/chat/completions", raw, routing_headers)
        priced = services.quoter.price(chat, RouteConstraints.parse(chat.routing, routing_headers), digest)
    except InvalidRequest as exc:
        return _error(400, str(exc), exc.param)
    except ConstraintError as exc:
        return _error(400, str(exc), "routing")
    except (RoutingError, PricingError) as exc:
        return _error(400, str(exc), "model")
    priced = await services.quotes.seal(digest, priced)
    base = services.public_url or f"{request.url.scheme}://{request.url.netloc}"
    resource = Resource(url=base.rstrip("/") + "/v1/chat/completions")
    d, q = priced.decision, priced.quote
    return JSONResponse(
        {
            "route": {
                "model": d.model,
                "reason": d.reason,
                "input_tokens": d.input_tokens,
                "max_output_tokens": d.output_tokens,
                "fallbacks": list(d.fallbacks),
                "strategy": d.strategy,
                "candidates": [
                    {
                        "model": c.model,
                        "predicted_quality": c.quality / 10_000,
                        "price": str(c.price),
                        "latency_ms": c.latency_ms,
                        "output_tokens": c.output_tokens,
                    }
                    for c in d.candidates
                ],
            },
            "price": {
                "amount": str(q.amount),
                "upstream_cost": str(q.upstream_cost),
                "asset": priced.requirements.asset,
                "decimals": services.table.asset.decimals,
                "network": priced.requirements.network,
            },
            "payment_required": {
                "x402Version": 2,
                "error": UNPAID_ERROR,
                "resource": resource.to_wire(),
                "accepts": [scheme.offer(priced).to_v2() for scheme in services.schemes.values()],
            },
            "expires_in": priced.requirements.max_timeout_seconds,
        }
    )
