"""``POST /v1/chat/completions``: runs the paid, routed model call (the gate charged for it)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from pydantic_core import to_json
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Scope

from payrouter import metrics
from payrouter.feedback.served import served
from payrouter.http_errors import error_body, error_response
from payrouter.messages import chat_to_message, chunks_to_events
from payrouter.metrics import calls as observed
from payrouter.quoting import PricedRoute
from payrouter.services import Services
from payrouter.upstream import UpstreamError
from payrouter.x402.call import PaidCall, paid_call
from pricing import PriceTable

__all__ = ["chat_completions", "messages"]


def _has_content(chunk: dict[str, Any]) -> bool:
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("tool_calls") or delta.get("function_call"):
            return True
    return False


async def _stream(services: Services, call: PaidCall, scope: Scope, anthropic: bool = False) -> Response:
    priced = call.route
    started = time.perf_counter()
    try:
        model_id, stream, attempts = await services.upstreams.stream(
            call.request.provider_body(), priced.decision, services.table, priced.requirements.amount, call.deadline
        )
    except UpstreamError as exc:
        return error_response(502, f"the model call failed ({exc}); your payment was not settled", "upstream_error")
    # the payment gate reads these to decide what to charge when the stream ends
    call.answered_by = model_id
    completion_id = str(stream.first.get("id") or "")
    completion_id = completion_id.replace("chatcmpl", "msg", 1) if anthropic else completion_id
    observed.answered(scope, completion_id)

    async def tracked() -> AsyncIterator[dict[str, Any]]:
        async for chunk in stream.chunks():
            chunk["model"] = model_id
            if _has_content(chunk):
                call.content = True
            usage = chunk.get("usage")
            if isinstance(usage, dict) and "prompt_tokens" in usage:
                call.input_tokens = int(usage.get("prompt_tokens") or 0)
                call.output_tokens = int(usage.get("completion_tokens") or 0)
                call.usage_known = True
                usage["payrouter"] = _charge_report(services.table, call, attempts)
            yield chunk
        call.completed = True
        took = time.perf_counter() - started  # failovers before the first chunk included
        provider = services.table.model(model_id).provider
        metrics.child(metrics.UPSTREAM_SECONDS, provider, model_id).observe(took)
        observed.model_time(scope, took * 1000)
        served(scope, services, call, completion_id, took)

    async def events() -> AsyncIterator[bytes]:
        try:
            if anthropic:
                async for event in chunks_to_events(tracked(), model_id):
                    yield event
            else:
                async for chunk in tracked():
                    yield b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
                yield b"data: [DONE]\n\n"
        except UpstreamError as exc:
            call.failed = True
            message = f"the model stream broke: {exc}"
            if anthropic:
                error = {"type": "error", "error": {"type": "api_error", "message": message}}
                yield b"event: error\ndata: " + json.dumps(error).encode() + b"\n\n"
            else:
                error = error_body(message, "upstream_error")
                yield b"data: " + json.dumps(error).encode() + b"\n\n"
        finally:
            await stream.aclose()

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", **_route_headers(model_id, priced, call.quoted)},
    )


def _answer(body: dict[str, Any], headers: dict[str, str]) -> Response:
    # compact JSON encoded in Rust: Starlette's JSONResponse (the json module) costs ~40 us more here
    return Response(to_json(body), media_type="application/json", headers=headers)


def _route_headers(model: str, priced: PricedRoute, charge: int) -> dict[str, str]:
    # a stream's headers go out before its usage is known: there the charge header is the quote
    return {
        "X-Payrouter-Model": model,
        "X-Payrouter-Charge": str(charge),
        "X-Payrouter-Route-Reason": priced.decision.reason,
    }


async def _complete(services: Services, call: PaidCall, scope: Scope) -> tuple[str, dict[str, Any]] | JSONResponse:
    """Run the non-streaming call: ``(answering model, OpenAI body with usage.payrouter)``, or a 502."""
    priced = call.route
    table = services.table
    started = time.perf_counter()
    try:
        answer = await services.upstreams.complete(
            call.request.provider_body(), priced.decision, table, priced.requirements.amount, call.deadline
        )
    except UpstreamError as exc:
        observed.model_time(scope, (time.perf_counter() - started) * 1000)
        return error_response(502, f"the model call failed ({exc}); your payment was not settled", "upstream_error")
    observed.model_time(scope, (time.perf_counter() - started) * 1000)
    completion = answer.completion
    call.answered_by, call.input_tokens, call.output_tokens = (
        answer.model,
        completion.input_tokens,
        completion.output_tokens,
    )
    call.usage_known = True
    body = dict(completion.body)
    body["model"] = answer.model
    usage = dict(body.get("usage") or {})
    usage["payrouter"] = _charge_report(table, call, answer.attempts)
    body["usage"] = usage
    return answer.model, body


def _charge_report(table: PriceTable, call: PaidCall, attempts: int) -> dict[str, Any]:
    """``usage.payrouter``: what was charged and why, on which chain and asset.

    ``charged`` is the quote (``exact``: the signed amount) or, for a usage-priced scheme, the
    price of the tokens used (``usage_price``) capped at the quote; ``pricing`` says which.
    """
    priced = call.route
    return {
        "charged": str(call.charge(table)),
        "pricing": "usage" if call.usage_priced else "quote",
        "quoted": str(call.quoted),
        "asset": table.asset.address,
        "decimals": table.asset.decimals,
        "network": table.network,
        "usage_price": str(call.usage_price(table)),
        "routed_model": priced.decision.model,
        "answered_by": call.answered_by,
        "attempts": attempts,
        "route_reason": priced.decision.reason,
    }


async def chat_completions(request: Request) -> Response:
    """Call the routed model (with failover) and answer in OpenAI's shape plus the charge."""
    services: Services = request.state.services
    call = paid_call(request.scope)
    if call.request.stream:
        return await _stream(services, call, request.scope)
    started = time.perf_counter()
    done = await _complete(services, call, request.scope)
    if isinstance(done, JSONResponse):
        return done
    model, body = done
    observed.answered(request.scope, str(body.get("id") or ""))
    served(request.scope, services, call, str(body.get("id") or ""), time.perf_counter() - started)
    return _answer(body, _route_headers(model, call.route, call.charge(services.table)))


async def messages(request: Request) -> Response:
    """``POST /v1/messages``: the same paid, routed call in the Anthropic Messages shape."""
    services: Services = request.state.services
    call = paid_call(request.scope)
    if call.request.stream:
        return await _stream(services, call, request.scope, anthropic=True)
    started = time.perf_counter()
    done = await _complete(services, call, request.scope)
    if isinstance(done, JSONResponse):
        return done
    model, body = done
    message = chat_to_message(body, model)
    observed.answered(request.scope, str(message.get("id") or ""))
    served(request.scope, services, call, str(message.get("id") or ""), time.perf_counter() - started)
    return _answer(message, _route_headers(model, call.route, call.charge(services.table)))
