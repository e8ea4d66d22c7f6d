"""``POST /v1/feedback``: the payer of a completion rates it (and nobody else can).

Body: ``{"completion_id": "chatcmpl-...", "rating": "good" | "bad", "signature": "0x..."}``,
the signature an EIP-191 ``personal_sign`` by the paying address over
`payrouter.feedback.feedback_message`. Answers 200 (rated), 400 (malformed), 403 (not signed
by this completion's payer), 404 (no such completion, or its record expired), 409 (already
rated the other way). A rating is counted in ``payrouter_feedback_total`` and written to the
request log with the call's prompt features, for ``payrouter router train --feedback``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from payrouter import metrics
from payrouter.feedback import FEEDBACK_TTL, RATINGS, CallRecord, FeedbackRecorder, call_key, feedback_signer, rated_key
from payrouter.feedback.served import FEEDBACK_STATE
from payrouter.http_errors import error_response
from payrouter.metrics.middleware import REQUEST_LOG_STATE
from payrouter.request_log import RequestLog
from payrouter.services import Services
from payrouter.store import StoreError
from wallets import SignatureError

__all__ = ["feedback"]

_MAX_BODY = 4096


def _parse(raw: bytes) -> tuple[str, str, bytes] | str:
    """``(completion id, rating, signature)``, or what is wrong with the body."""
    try:
        body = json.loads(raw)
    except ValueError:
        return "the body is not JSON"
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    completion_id, rating, signature = body.get("completion_id"), body.get("rating"), body.get("signature")
    if not isinstance(completion_id, str) or not 0 < len(completion_id) <= 200:
        return "completion_id must be the id of a completion you paid for"
    if rating not in RATINGS:
        return f"rating must be one of {sorted(RATINGS)}"
    if not isinstance(signature, str):
        return "signature must be the 0x-hex EIP-191 signature of the feedback message by the paying address"
    try:
        sig = bytes.fromhex(signature.removeprefix("0x"))
    except ValueError:
        return "signature is not hex"
    return completion_id, str(rating), sig


async def feedback(request: Request) -> Response:
    """Record the paying address's rating of one of its completions."""
    services: Services = request.state.services
    raw = await request.body()
    if len(raw) > _MAX_BODY:
        return error_response(413, f"feedback bodies are at most {_MAX_BODY} bytes", "invalid_request_error")
    parsed = _parse(raw)
    if isinstance(parsed, str):
        return error_response(400, parsed, "invalid_request_error")
    completion_id, rating, signature = parsed
    try:
        stored = await services.store.get(call_key(completion_id))
        if stored is None:
            return error_response(404, "no completion with that id to rate (unknown, or too old)", "not_found")
        record = CallRecord.from_json(stored)
        try:
            signer = feedback_signer(completion_id, rating, signature)
        except SignatureError:
            return error_response(400, "signature does not recover to an address", "invalid_request_error")
        if signer.lower() != record.payer.lower():
            return error_response(403, "only the address that paid for a completion may rate it", "permission_error")
        earlier = await services.store.get(rated_key(completion_id))
        recorder = getattr(request.state, FEEDBACK_STATE, None)
        ttl = recorder.ttl if isinstance(recorder, FeedbackRecorder) else FEEDBACK_TTL
        if earlier is None and await services.store.claim(rated_key(completion_id), rating, ttl):
            earlier = b""
        elif earlier is None:  # a concurrent rating won the claim
            earlier = await services.store.get(rated_key(completion_id)) or b""
    except StoreError:
        return error_response(503, "feedback store unavailable; try again", "server_error")
    answer = JSONResponse({"completion_id": completion_id, "rating": rating, "model": record.model})
    if earlier:  # rated before: the same rating again is accepted once more, and counted once
        if earlier.decode() != rating:
            return error_response(409, "this completion was already rated the other way", "conflict")
        return answer
    metrics.FEEDBACK.labels(model=record.model, arm=record.arm, rating=rating).inc()
    log: RequestLog | None = getattr(request.state, REQUEST_LOG_STATE, None)
    if log is not None and log.enabled:
        event: dict[str, Any] = {
            "ts": time.time(),
            "event": "feedback",
            "request_id": completion_id,
            "payer": record.payer,
            "model": record.model,
            "router_name": record.router_name,
            "rule": record.rule,
            "arm": record.arm,
            "rating": rating,
            "features": record.features,
            "format": record.format,
        }
        log.write(event)
    return answer
