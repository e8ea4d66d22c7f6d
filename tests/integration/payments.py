"""Build real (and deliberately wrong) x402 payments for the integration tests."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import httpx

from payrouter.x402.wire import encode_header
from wallets import Eip712Domain, LocalSigner, TransferWithAuthorization, new_nonce, sign_authorization


def offer(http: httpx.Client, url: str, body: dict[str, Any]) -> dict[str, Any]:
    """The decoded PAYMENT-REQUIRED of an unpaid call."""
    response = http.post(url, json=body)
    assert response.status_code == 402, response.text
    decoded: dict[str, Any] = json.loads(base64.b64decode(response.headers["PAYMENT-REQUIRED"]))
    return decoded


def payment(
    offer_: dict[str, Any],
    signer: LocalSigner,
    *,
    accepted: dict[str, Any] | None = None,
    version: int = 2,
    to: str | None = None,
    value: int | None = None,
    valid_after: int = 0,
    valid_before: int | None = None,
    sign_with: LocalSigner | None = None,
) -> dict[str, Any]:
    """A payment for ``offer_``'s first requirement, with any field overridden.

    The signature is always valid for the authorization as sent (by ``sign_with`` if given),
    so a rejection proves the server checked the field, not the signature.
    """
    req = dict(offer_["accepts"][0])
    if accepted:
        req.update(accepted)
    auth = TransferWithAuthorization(
        from_=signer.address,
        to=to or req["payTo"],
        value=int(req["amount"]) if value is None else value,
        valid_after=valid_after,
        valid_before=int(time.time()) + 300 if valid_before is None else valid_before,
        nonce=new_nonce(),
    )
    original = offer_["accepts"][0]
    domain = Eip712Domain(
        original["extra"]["name"],
        original["extra"]["version"],
        int(original["network"].split(":")[1]),
        original["asset"],
    )
    key = sign_with or signer
    signature = key.sign_typed_data(domain, auth)
    return {
        "x402Version": version,
        "resource": offer_.get("resource"),
        "accepted": req,
        "payload": {"signature": "0x" + signature.hex(), "authorization": auth.to_wire()},
    }


def header(obj: dict[str, Any]) -> dict[str, str]:
    return {"PAYMENT-SIGNATURE": encode_header(obj)}


def rejection(response: httpx.Response) -> tuple[int, str]:
    """Status and the x402 reason of a rejected payment (from PAYMENT-REQUIRED, checked against the body)."""
    required = json.loads(base64.b64decode(response.headers["PAYMENT-REQUIRED"]))
    assert response.json()["error"] == required["error"]
    assert required["accepts"], "a rejection must carry a fresh offer"
    return response.status_code, str(required["error"])


def sse_events(text: str) -> list[tuple[str | None, str]]:
    """``(event name, data)`` of each server-sent event in ``text``."""
    out = []
    for block in text.strip().split("\n\n"):
        event, data = None, ""
        for line in block.splitlines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data = line[5:].strip()
        out.append((event, data))
    return out


def sign_valid(offer_: dict[str, Any], signer: LocalSigner) -> dict[str, str]:
    return header(payment(offer_, signer))


__all__ = ["header", "offer", "payment", "rejection", "sign_authorization", "sign_valid", "sse_events"]
