"""Build an x402 v2 ``exact`` payment for a 402 offer, signed with a `wallets.Signer`."""

from __future__ import annotations

import time
from typing import Any

from payrouter.x402.wire import HEADER_PAYMENT_REQUIRED, decode_header, encode_header
from wallets import Eip712Domain, Signer, TransferWithAuthorization, new_nonce, sign_authorization

__all__ = ["PaymentOfferError", "build_payment_header", "read_offer"]


class PaymentOfferError(ValueError):
    """A 402 offer is missing, malformed, or not payable with the exact EVM scheme."""


def read_offer(headers: Any) -> dict[str, Any]:
    """Decode the ``PAYMENT-REQUIRED`` header of a 402 (any mapping with ``.get``)."""
    value = headers.get(HEADER_PAYMENT_REQUIRED)
    if not value:
        raise PaymentOfferError("the 402 has no PAYMENT-REQUIRED header")
    try:
        return decode_header(value)
    except Exception as exc:
        raise PaymentOfferError(f"unreadable PAYMENT-REQUIRED header: {exc}") from None


def build_payment_header(offer: dict[str, Any], signer: Signer, max_amount: int) -> tuple[str, dict[str, Any]]:
    """Sign the first ``exact`` EVM requirement of ``offer`` and return the header value.

    Args:
        offer: the decoded v2 ``PaymentRequired``.
        signer: the payer.
        max_amount: refuse to sign for more than this many atomic units.

    Returns:
        ``(PAYMENT-SIGNATURE value, the accepted requirements)``.

    Raises:
        PaymentOfferError: nothing payable, or the price is above ``max_amount``.
    """
    for req in offer.get("accepts") or []:
        if req.get("scheme") != "exact" or not str(req.get("network", "")).startswith("eip155:"):
            continue
        amount = int(req["amount"])
        if amount > max_amount:
            raise PaymentOfferError(f"price {amount} is above the limit of {max_amount}")
        extra = req.get("extra") or {}
        domain = Eip712Domain(
            str(extra["name"]), str(extra["version"]), int(req["network"].split(":")[1]), req["asset"]
        )
        auth = TransferWithAuthorization(
            from_=signer.address,
            to=req["payTo"],
            value=amount,
            valid_after=0,
            valid_before=int(time.time()) + int(req["maxTimeoutSeconds"]),
            nonce=new_nonce(),
        )
        signature = sign_authorization(signer, domain, auth)
        payload = {
            "x402Version": 2,
            "resource": offer.get("resource"),
            "accepted": req,
            "payload": {"signature": "0x" + signature.hex(), "authorization": auth.to_wire()},
        }
        return encode_header(payload), req
    raise PaymentOfferError("the offer has no exact EVM requirement")
