"""Reading 402 offers (x402 v2 header or v1 body), choosing an option, signing ``exact`` EVM payments.

`choose` picks among the schemes a payer can pay (``exact``, and ``batch-settlement`` when
the agent keeps payment channels: `payrouter.client.channel_payer`).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from payrouter.client.channels import ChannelAttempt
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
    "payment_envelope",
    "read_offer",
    "sign_choice",
    "sign_offer",
]

_V1_CHAIN_IDS = {name: chain_id for chain_id, name in V1_NETWORKS.items()}


EXACT = "exact"
BATCH = "batch-settlement"


class PaymentOfferError(ValueError):
    """A 402 offer is missing, malformed, or has no option this payer can pay."""


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
    """A signed payment ready to send.

    ``amount`` is what was signed for this request (for ``batch-settlement``: the request's
    maximum; the charge is in the receipt). ``channel`` is set for ``batch-settlement``.
    """

    header_name: str
    header_value: str
    requirement: dict[str, Any]
    amount: int
    network: str
    asset: str
    pay_to: str
    valid_before: int
    payment_id: str | None
    scheme: str = EXACT
    channel: ChannelAttempt | None = None


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
    """The option `choose` picked: its amount, chain, the requirement object and its scheme."""

    amount: int
    chain_id: int
    requirement: dict[str, Any]
    scheme: str = EXACT


def _payable(req: dict[str, Any], chain_id: int | None, version: int) -> str | None:
    """The scheme of ``req`` if this client can pay it (an EVM chain, EIP-3009 transfers), else None."""
    extra = req.get("extra") or {}
    scheme = req.get("scheme")
    if chain_id is None or not isinstance(extra, dict) or scheme not in (EXACT, BATCH):
        return None
    if extra.get("assetTransferMethod", "eip3009") != "eip3009" or "name" not in extra or "version" not in extra:
        return None
    if scheme == BATCH:
        delay = extra.get("withdrawDelay")
        # batch-settlement is x402 v2 only; a channel needs the receiver's authorizer and a
        # JSON-integer delay (else the channel id would not be the server's)
        if version != 2 or not extra.get("receiverAuthorizer") or isinstance(delay, bool) or not isinstance(delay, int):
            return None
    return str(scheme)


def sign_offer(offer: Offer, signer: Signer, policy: SpendingPolicy) -> SignedPayment:
    """Pick the cheapest ``exact`` EVM option the policy allows and sign it (no channels).

    Raises:
        PaymentRefused: every option is refused by the policy (the cheapest option's reason).
        PaymentOfferError: no ``exact`` EVM option at all.
    """
    return sign_choice(offer, signer, choose(offer, policy))


def choose(offer: Offer, policy: SpendingPolicy, schemes: Sequence[str] = (EXACT,)) -> Choice:
    """The option to pay; nothing is signed.

    Args:
        schemes: the schemes this payer may use, most preferred first (``"exact"``,
            ``"batch-settlement"``). Options of an earlier scheme win; within a scheme the
            cheapest the policy allows wins.

    Raises:
        PaymentRefused: every option is refused by the policy (the first refused option's reason).
        PaymentOfferError: no EVM (EIP-3009) option of an allowed scheme at all.
    """
    options = []
    for req in offer.accepts:
        chain_id = _chain_id(str(req.get("network", "")), offer.version)
        scheme = _payable(req, chain_id, offer.version)
        if scheme is None or scheme not in schemes:
            continue
        assert chain_id is not None
        options.append((schemes.index(scheme), _amount(req, offer.version), chain_id, req, scheme))
    if not options:
        raise PaymentOfferError(f"the offer has no {' or '.join(schemes)} EVM (EIP-3009) option")
    options.sort(key=lambda o: (o[0], o[1]))
    refusal: PaymentRefused | None = None
    for _, amount, chain_id, req, scheme in options:
        try:
            policy.check_offer(str(req["network"]), str(req["asset"]), str(req["payTo"]), amount)
        except PaymentRefused as exc:
            refusal = refusal or exc
            continue
        return Choice(amount, chain_id, req, scheme)
    assert refusal is not None
    raise refusal


def payment_envelope(
    offer: Offer, requirement: dict[str, Any], inner: dict[str, Any]
) -> tuple[dict[str, Any], str | None]:
    """The v2 ``PaymentPayload`` around a scheme's inner payload, and its payment id.

    A payment id (x402 payment-identifier) is added when the offer declares the extension.
    """
    payload: dict[str, Any] = {
        "x402Version": 2,
        "resource": offer.body.get("resource"),
        "accepted": requirement,
        "payload": inner,
    }
    payment_id = None
    if offer.payment_identifier:
        payment_id = "pay_" + secrets.token_hex(16)
        declared = offer.body["extensions"]["payment-identifier"]
        info = dict(declared.get("info") or {}) if isinstance(declared, dict) else {}
        info["id"] = payment_id
        payload["extensions"] = {
            "payment-identifier": {**(declared if isinstance(declared, dict) else {}), "info": info}
        }
    return payload, payment_id


def sign_choice(offer: Offer, signer: Signer, choice: Choice) -> SignedPayment:
    """Sign the chosen ``exact`` option as a v2 (or v1) payment header."""
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
        payload, payment_id = payment_envelope(offer, req, inner)
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
