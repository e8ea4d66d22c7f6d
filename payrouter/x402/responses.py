"""HTTP responses of the payment gate: 402 offers and settlement receipts."""

from __future__ import annotations

from typing import Any

from payrouter.x402.requirements import Requirements, Resource
from payrouter.x402.wire import (
    HEADER_PAYMENT_REQUIRED,
    HEADER_PAYMENT_RESPONSE,
    HEADER_V1_PAYMENT_RESPONSE,
    compact_json,
    encode_header,
    v1_network_name,
)

__all__ = [
    "EXPOSED_HEADERS",
    "PAYMENT_IDENTIFIER",
    "PAYMENT_IDENTIFIER_DECLARATION",
    "payment_required",
    "settlement_header",
]

EXPOSED_HEADERS = [
    HEADER_PAYMENT_REQUIRED,
    HEADER_PAYMENT_RESPONSE,
    HEADER_V1_PAYMENT_RESPONSE,
    "X-Payrouter-Model",
    "X-Payrouter-Charge",
    "X-Payrouter-Route-Reason",
]
UNPAID_ERROR = "PAYMENT-SIGNATURE header is required"
PAYMENT_IDENTIFIER = "payment-identifier"
# We honour x402's payment-identifier extension (optional for clients): the same id with the
# same payment gets the first response again without a second charge.
PAYMENT_IDENTIFIER_DECLARATION: dict[str, Any] = {
    PAYMENT_IDENTIFIER: {
        "info": {"required": False},
        "schema": {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "required": {"type": "boolean"},
                "id": {"type": "string", "minLength": 16, "maxLength": 128, "pattern": "^[a-zA-Z0-9_-]+$"},
            },
            "required": ["required"],
        },
    }
}


def payment_required(
    offers: list[Requirements], resource: Resource, reason: str | None = None, message: str | None = None
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """Body and headers of a 402 offering every option in ``offers`` (preferred first).

    The v2 ``PaymentRequired`` goes in the ``PAYMENT-REQUIRED`` header. The body is the v1
    ``PaymentRequirementsResponse`` when some offer has a v1 form (v1 clients read only the
    body), else the v2 object; either way it carries ``error`` (the x402 reason, or that
    payment is required) and a human ``message``.
    """
    error = reason or UNPAID_ERROR
    v2: dict[str, Any] = {
        "x402Version": 2,
        "error": error,
        "resource": resource.to_wire(),
        "accepts": [r.to_v2() for r in offers],
        "extensions": PAYMENT_IDENTIFIER_DECLARATION,
    }
    v1 = [w for w in (r.to_v1(resource) for r in offers) if w is not None]
    body: dict[str, Any] = {"x402Version": 1, "error": error, "accepts": v1} if v1 else dict(v2)
    schemes = " or ".join(dict.fromkeys(r.scheme for r in offers))
    body["message"] = message or f"pay the quoted amount with an x402 {schemes} payment and retry"
    headers = [
        (HEADER_PAYMENT_REQUIRED.encode(), encode_header(v2).encode()),
        (b"content-type", b"application/json"),
        (b"cache-control", b"no-store"),
    ]
    return compact_json(body), headers


def settlement_header(
    version: int,
    success: bool,
    network: str,
    payer: str | None,
    transaction: str = "",
    reason: str | None = None,
) -> tuple[bytes, bytes]:
    """The ``PAYMENT-RESPONSE`` (v2) or ``X-PAYMENT-RESPONSE`` (v1) header."""
    if version == 1:
        network = v1_network_name(int(network.split(":", 1)[1])) or network
    obj: dict[str, Any] = {"success": success, "transaction": transaction, "network": network}
    if payer:
        obj["payer"] = payer
    if reason:
        obj["errorReason"] = reason
    name = HEADER_PAYMENT_RESPONSE if version == 2 else HEADER_V1_PAYMENT_RESPONSE
    return name.encode(), encode_header(obj).encode()
