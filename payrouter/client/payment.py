"""Reading 402 offers (x402 v2 header or v1 body) and signing ``exact`` EVM payments."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from payrouter.client.policy import PaymentRefused, SpendingPolicy
from payrouter.x402.wire import HEADER_PAYMENT_REQUIRED, V1_NETWORKS, decode_header, encode_header
from wallets import Eip712Domain, Signer, TransferWithAuthorization, new_nonce, sign_authorization

__all__ = [
    "Choice",
    "Offer",
    "PaymentOfferError",
    "SignedPayment",
    "build_payment_header",
    "choose",
    "read_offer",
    "sign_choice",
    "sign_offer",
]

_V1_CHAIN_IDS = {name: chain_id for chain_id, name in V1_NETWORKS.items()}


class PaymentOfferError(ValueError):
    """A 402 offer is missing, malformed, or not payable with the exact EVM scheme."""


@dataclass(frozen=True, slots=True)
class Offer:
    """A decoded 402: its protocol version and the whole ``PaymentRequired`` object."""

    version: int
    body: dict[str, Any]

    @property
    def accepts(self) -> list[dict[str, Any]]:
        """The payment options offered."""
        accepts = self.body.get("accepts")
        return [a for a in accepts if isinstance(a, dict)] if isinstance(accepts, list) else []

    @property
    def payment_identifier(self) -> bool:
        """True when the server declares the x402 payment-identifier extension."""
        extensions = self.body.get("extensions")
        return isinstance(extensions, dict) and "payment-identifier" in extensions


@dataclass(frozen=True, slots=True)
class SignedPayment:
    """A signed payment ready to send."""

    header_name: str
    header_value: str
    requirement: dict[str, Any]
    amount: int
    network: str
    asset: str
    pay_to: str
    valid_before: int
    payment_id: str | None


def read_offer(headers: Any, body: bytes | None = None) -> Offer:
    """Decode a 402: the v2 ``PAYMENT-REQUIRED`` header, else a v1 JSON body.

    Raises:
        PaymentOfferError: neither is present and well formed.
    """
    value = headers.get(HEADER_PAYMENT_REQUIRED)
    if value:
        try:
            return Offer(2, decode_header(value))
        except Exception as exc:
            raise PaymentOfferError(f"unreadable PAYMENT-REQUIRED header: {exc}") from None
    if body:
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if isinstance(data, dict) and data.get("x402Version") == 1 and isinstance(data.get("accepts"), list):
            return Offer(1, data)
    raise PaymentOfferError("the 402 carries no x402 offer (no PAYMENT-REQUIRED header, no v1 body)")


def _chain_id(network: str, version: int) -> int | None:
    if version == 1:
        return _V1_CHAIN_IDS.get(network)
    if network.startswith("eip155:") and network[7:].isdigit():
        return int(network[7:])
    return None


def _amount(req: dict[str, Any], version: int) -> int:
    raw = req.get("amount" if version == 2 else "maxAmountRequired")
    if not isinstance(raw, str) or not raw.isdigit():
        raise PaymentOfferError("offer amount must be a decimal string of atomic units")
    return int(raw)


@dataclass(frozen=True, slots=True)
class Choice:
    """The option `choose` picked: its amount, chain and the requirement object."""

    amount: int
    chain_id: int
    requirement: dict[str, Any]


def sign_offer(offer: Offer, signer: Signer, policy: SpendingPolicy) -> SignedPayment:
    """Pick the cheapest ``exact`` EVM option the policy allows and sign it.

    Raises:
        PaymentRefused: every option is refused by the policy (the cheapest option's reason).
        PaymentOfferError: no ``exact`` EVM option at all.
    """
    return sign_choice(offer, signer, choose(offer, policy))


def choose(offer: Offer, policy: SpendingPolicy) -> Choice:
    """The cheapest ``exact`` EVM option the policy allows; nothing is signed.

    Raises:
        PaymentRefused: every option is refused by the policy (the cheapest option's reason).
        PaymentOfferError: no ``exact`` EVM option at all.
    """
    options = []
    for req in offer.accepts:
        network = str(req.get("network", ""))
        chain_id = _chain_id(network, offer.version)
        extra = req.get("extra") or {}
        if req.get("scheme") != "exact" or chain_id is None or not isinstance(extra, dict):
            continue
        if extra.get("assetTransferMethod", "eip3009") != "eip3009" or "name" not in extra or "version" not in extra:
            continue
        options.append((_amount(req, offer.version), chain_id, req))
    if not options:
        raise PaymentOfferError("the offer has no exact EVM (EIP-3009) option")
    options.sort(key=lambda o: o[0])
    refusal: PaymentRefused | None = None
    for amount, chain_id, req in options:
        try:
            policy.check_offer(str(req["network"]), str(req["asset"]), str(req["payTo"]), amount)
        except PaymentRefused as exc:
            refusal = refusal or exc
            continue
        return Choice(amount, chain_id, req)
    assert refusal is not None
    raise refusal


def sign_choice(offer: Offer, signer: Signer, choice: Choice) -> SignedPayment:
    """Sign the chosen option as a v2 (or v1) payment header."""
    req, amount, chain_id = choice.requirement, choice.amount, choice.chain_id
    extra = req["extra"]
    domain = Eip712Domain(str(extra["name"]), str(extra["version"]), chain_id, str(req["asset"]))
    now = int(time.time())
    valid_before = now + int(req.get("maxTimeoutSeconds") or 300)
    auth = TransferWithAuthorization(
        from_=signer.address,
        to=str(req["payTo"]),
        value=amount,
        # v1 clients backdate validAfter for clock skew; v2 clients send 0
        valid_after=0 if offer.version == 2 else now - 600,
        valid_before=valid_before,
        nonce=new_nonce(),
    )
    signature = sign_authorization(signer, domain, auth)
    inner = {"signature": "0x" + signature.hex(), "authorization": auth.to_wire()}
    payment_id = None
    if offer.version == 2:
        payload: dict[str, Any] = {
            "x402Version": 2,
            "resource": offer.body.get("resource"),
            "accepted": req,
            "payload": inner,
        }
        if offer.payment_identifier:
            payment_id = "pay_" + secrets.token_hex(16)
            declared = offer.body["extensions"]["payment-identifier"]
            info = dict(declared.get("info") or {}) if isinstance(declared, dict) else {}
            info["id"] = payment_id
            payload["extensions"] = {
                "payment-identifier": {**(declared if isinstance(declared, dict) else {}), "info": info}
            }
        name = "PAYMENT-SIGNATURE"
    else:
        payload = {"x402Version": 1, "scheme": "exact", "network": req["network"], "payload": inner}
        name = "X-PAYMENT"
    return SignedPayment(
        header_name=name,
        header_value=encode_header(payload),
        requirement=req,
        amount=amount,
        network=str(req["network"]),
        asset=str(req["asset"]),
        pay_to=str(req["payTo"]),
        valid_before=valid_before,
        payment_id=payment_id,
    )


def build_payment_header(offer: dict[str, Any], signer: Signer, max_amount: int) -> tuple[str, dict[str, Any]]:
    """Sign a decoded v2 ``PaymentRequired`` for at most ``max_amount``; return the header value
    and the accepted requirement (a shortcut over `sign_offer` for scripts and tests).

    Raises:
        PaymentRefused: the price is above ``max_amount``.
        PaymentOfferError: nothing payable.
    """
    signed = sign_offer(Offer(2, offer), signer, SpendingPolicy(max_per_call=max_amount))
    return signed.header_value, signed.requirement
