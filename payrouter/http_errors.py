"""The one shape of every error payrouter answers with (OpenAI's), for handlers and the gate.

``{"error": {"message", "type", "param", "code"}}``; ``/v1/messages`` turns it into
Anthropic's shape on the way out (`payrouter.messages.AnthropicErrorShape`).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse

__all__ = ["error_body", "error_bytes", "error_response"]


def error_body(message: str, kind: str, param: str | None = None) -> dict[str, Any]:
    """The error object: ``kind`` is e.g. ``invalid_request_error``, ``upstream_error``,
    ``payment_error``, ``server_error``, ``conflict``."""
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def error_bytes(message: str, kind: str, param: str | None = None) -> bytes:
    """`error_body` as the JSON bytes of a raw ASGI response."""
    return json.dumps(error_body(message, kind, param)).encode()


def error_response(status: int, message: str, kind: str, param: str | None = None) -> JSONResponse:
    """`error_body` as a Starlette response."""
    return JSONResponse(error_body(message, kind, param), status)
