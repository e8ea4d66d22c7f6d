"""``GET /openapi.json``: the machine-readable API description."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from payrouter import __version__
from payrouter.chat import ChatRequest

__all__ = ["openapi"]

_ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {"message": {"type": "string"}, "type": {"type": "string"}, "param": {"type": "string"}},
        }
    },
}


def _document() -> dict[str, Any]:
    chat_schema = ChatRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = chat_schema.pop("$defs", {})
    paid = {
        "200": {
            "description": "The completion. `PAYMENT-RESPONSE` (v2) or `X-PAYMENT-RESPONSE` (v1) carries the "
            "settlement receipt; `X-Payrouter-Model` and `X-Payrouter-Charge` the route and the charge.",
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
        "400": {"description": "Invalid request", "content": {"application/json": {"schema": _ERROR}}},
        "402": {
            "description": "Payment required or rejected. The `PAYMENT-REQUIRED` header carries the base64 x402 v2 "
            "PaymentRequired; the body carries the v1 form where the network has a v1 name, with `error` "
            "set to the x402 reason.",
        },
        "413": {"description": "Request body too large"},
        "502": {"description": "Every upstream model failed; nothing was charged"},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "payrouter",
            "version": __version__,
            "description": "An AI model router paid per call over x402.",
        },
        "paths": {
            "/v1/chat/completions": {
                "post": {
                    "summary": "Routed, paid chat completion (x402 exact, EIP-3009)",
                    "parameters": [
                        {"name": "PAYMENT-SIGNATURE", "in": "header", "required": False, "schema": {"type": "string"}},
                        {"name": "X-PAYMENT", "in": "header", "required": False, "schema": {"type": "string"}},
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ChatRequest"}}},
                    },
                    "responses": paid,
                }
            },
            "/v1/quote": {
                "post": {
                    "summary": "Free dry run: the route, the price and the exact x402 requirements",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ChatRequest"}}},
                    },
                    "responses": {"200": {"description": "The quote"}, "400": {"description": "Invalid request"}},
                }
            },
            "/v1/models": {"get": {"summary": "The catalog with prices", "responses": {"200": {"description": "OK"}}}},
            "/v1/feedback": {
                "post": {
                    "summary": "The payer of a completion rates it (signed by the paying address, EIP-191)",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["completion_id", "rating", "signature"],
                                    "properties": {
                                        "completion_id": {"type": "string", "description": "the completion's id"},
                                        "rating": {"type": "string", "enum": ["bad", "good"]},
                                        "signature": {
                                            "type": "string",
                                            "description": "0x-hex personal_sign of the feedback message "
                                            "(payrouter.feedback.feedback_message) by the paying address",
                                        },
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": {"description": "Rated"},
                        "400": {"description": "Malformed"},
                        "403": {"description": "Not signed by this completion's payer"},
                        "404": {"description": "No such completion (or its record expired)"},
                        "409": {"description": "Already rated the other way"},
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Health of the store and the chain",
                    "responses": {"200": {"description": "Healthy"}, "503": {"description": "Degraded"}},
                }
            },
        },
        "components": {"schemas": {"ChatRequest": chat_schema, **defs}},
    }


_DOC = _document()


async def openapi(request: Request) -> JSONResponse:
    """The OpenAPI 3.1 document."""
    return JSONResponse(_DOC)
