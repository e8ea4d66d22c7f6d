"""``POST /v1/chat/completions``: runs the paid, routed model call (the gate charged for it)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from payrouter.quoting import PricedRoute
from payrouter.services import Services
from payrouter.upstream import UpstreamError
from payrouter.x402.gate import route_of
from pricing import charge_for_usage

__all__ = ["chat_completions"]


def _error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": None}}, status)


async def chat_completions(request: Request) -> JSONResponse:
    """Call the routed model (with failover) and answer in OpenAI's shape plus the charge."""
    services: Services = request.state.services
    attached = route_of(request.scope)
    priced: PricedRoute = attached["route"]
    chat = attached["request"]
    table = services.table
    try:
        answer = await services.upstreams.complete(
            chat.provider_body(), priced.decision, table, priced.requirements.amount
        )
    except UpstreamError as exc:
        return _error(502, f"the model call failed ({exc}); your payment was not settled", "upstream_error")
    completion = answer.completion
    # The exact scheme charges the quote; the usage-priced figure shows what it covered.
    usage_price = charge_for_usage(
        table, answer.model, completion.input_tokens, completion.output_tokens, cap=priced.requirements.amount
    )
    body = dict(completion.body)
    body["model"] = answer.model
    usage = dict(body.get("usage") or {})
    usage["payrouter"] = {
        "charged": str(priced.requirements.amount),
        "asset": table.asset.address,
        "decimals": table.asset.decimals,
        "network": table.network,
        "usage_price": str(usage_price.amount),
        "routed_model": priced.decision.model,
        "answered_by": answer.model,
        "attempts": answer.attempts,
        "route_reason": priced.decision.reason,
    }
    body["usage"] = usage
    return JSONResponse(
        body,
        headers={
            "X-Payrouter-Model": answer.model,
            "X-Payrouter-Charge": str(priced.requirements.amount),
            "X-Payrouter-Route-Reason": priced.decision.reason,
        },
    )
