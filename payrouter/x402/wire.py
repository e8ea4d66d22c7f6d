"""x402 wire formats: header names, base64 JSON, requirements and payloads (v2 and v1).

Everything here is pure data handling with strict limits: a payment header is attacker
input, so it is size-checked before decoding and shape-checked field by field.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic_core import from_json, to_json

from payrouter.x402.errors import PaymentRejected, Reason
from wallets import TransferWithAuthorization, TypedDataError

__all__ = [
    "HEADER_PAYMENT_REQUIRED",
    "HEADER_PAYMENT_RESPONSE",
    "HEADER_PAYMENT_SIGNATURE",
    "HEADER_V1_PAYMENT",
    "HEADER_V1_PAYMENT_RESPONSE",
    "MAX_PAYMENT_HEADER_BYTES",
    "V1_NETWORKS",
    "Envelope",
    "PaymentPayload",
    "decode_header",
    "encode_header",
    "exact_payment",
    "parse_envelope",
    "parse_payment",
    "v1_network_name",
]

HEADER_PAYMENT_REQUIRED = "PAYMENT-REQUIRED"
HEADER_PAYMENT_SIGNATURE = "PAYMENT-SIGNATURE"
HEADER_PAYMENT_RESPONSE = "PAYMENT-RESPONSE"
HEADER_V1_PAYMENT = "X-PAYMENT"
HEADER_V1_PAYMENT_RESPONSE = "X-PAYMENT-RESPONSE"

# A real exact/EVM payment header is ~1.1 KB of base64; 8 KiB leaves room for extensions
# while bounding what one request can make us decode and parse.
MAX_PAYMENT_HEADER_BYTES = 8192

# v1 addressed networks by name; only these chains can be offered to v1 clients.
V1_NETWORKS: dict[int, str] = {
    8453: "base",
    84532: "base-sepolia",
    1: "ethereum",
    137: "polygon",
    80002: "polygon-amoy",
    43114: "avalanche",
    43113: "avalanche-fuji",
    2741: "abstract",
    11124: "abstract-testnet",
    4689: "iotex",
    1329: "sei",
    1328: "sei-testnet",
    3338: "peaq",
    1513: "story",
    656476: "educhain",
    1444673419: "skale-base-sepolia",
    4326: "megaeth",
    143: "monad",
    10143: "monad-testnet",
    988: "stable",
    2201: "stable-testnet",
    42220: "celo",
    14: "flare",
}


def v1_network_name(chain_id: int) -> str | None:
    """The v1 name of a chain, or None when v1 clients cannot address it (e.g. 31337)."""
    return V1_NETWORKS.get(chain_id)


def compact_json(obj: Any) -> bytes:
    """Compact UTF-8 JSON of ``obj`` (no spaces, non-ASCII unescaped): what every 402 and
    receipt carries, encoded in Rust (pydantic-core) since it is on every paid and unpaid call.

    Raises:
        pydantic_core.PydanticSerializationError: ``obj`` holds something JSON cannot carry.
    """
    return to_json(obj)


def encode_header(obj: dict[str, Any]) -> str:
    """Base64 (standard alphabet, padded) of compact UTF-8 JSON, as x402 headers carry."""
    return base64.b64encode(compact_json(obj)).decode("ascii")


def decode_header(value: str) -> dict[str, Any]:
    """Decode a base64 JSON payment header, strictly.

    Raises:
        PaymentRejected: ``invalid_payload`` when oversized, not base64, not JSON, or not an object.
    """
    if len(value) > MAX_PAYMENT_HEADER_BYTES:
        raise PaymentRejected(
            Reason.INVALID_PAYLOAD, f"payment header is {len(value)} bytes; the limit is {MAX_PAYMENT_HEADER_BYTES}"
        )
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise PaymentRejected(Reason.INVALID_PAYLOAD, "payment header is not valid base64") from None
    try:
        obj = from_json(raw)  # pydantic-core: a third of json.loads' time on a voucher's ~1 KB
    except ValueError:
        raise PaymentRejected(Reason.INVALID_PAYLOAD, "payment header is not valid JSON") from None
    if not isinstance(obj, dict):
        raise PaymentRejected(Reason.INVALID_PAYLOAD, "payment header JSON must be an object")
    return obj


@dataclass(frozen=True, slots=True)
class PaymentPayload:
    """A decoded ``exact`` EVM payment, normalised across protocol versions.

    Attributes:
        version: 1 or 2.
        scheme, network: what the client says it paid with (v2: ``accepted``; v1: top level).
        accepted: the v2 ``accepted`` requirements echoed by the client (``None`` for v1).
        authorization: the EIP-3009 authorization.
        signature: 65-byte signature (longer for smart wallets).
        raw: the decoded JSON, for forwarding to a remote facilitator.
    """

    version: int
    scheme: str
    network: str
    accepted: dict[str, Any] | None
    authorization: TransferWithAuthorization
    signature: bytes
    raw: dict[str, Any]
    payment_id: str | None = None

    def fingerprint(self) -> str:
        """A digest of the whole payment (authorization, signature, accepted terms)."""
        canonical = json.dumps(self.raw, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def _str_field(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise PaymentRejected(Reason.INVALID_PAYLOAD, f"{where}.{key} must be a string")
    return value


_PAYMENT_ID = re.compile(r"^[A-Za-z0-9_-]{16,128}$")


def _payment_id(obj: dict[str, Any]) -> str | None:
    extensions = obj.get("extensions")
    if not isinstance(extensions, dict) or "payment-identifier" not in extensions:
        return None
    ext = extensions["payment-identifier"]
    info = ext.get("info") if isinstance(ext, dict) else None
    pid = info.get("id") if isinstance(info, dict) else None
    if pid is None:
        return None
    if not isinstance(pid, str) or not _PAYMENT_ID.match(pid):
        raise PaymentRejected(
            Reason.INVALID_PAYLOAD, "extensions.payment-identifier.info.id must be 16-128 of [A-Za-z0-9_-]"
        )
    return pid


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded payment header before any scheme reads its ``payload`` (v2 and v1 alike).

    Attributes:
        version: 1 or 2.
        scheme, network: what the client says it paid with (v2: ``accepted``; v1: top level).
        accepted: the v2 ``accepted`` requirements echoed by the client (``None`` for v1).
        payload: the scheme's own object, unchecked.
        raw: the decoded JSON.
        payment_id: the x402 payment-identifier, if the client sent one.
    """

    version: int
    scheme: str
    network: str
    accepted: dict[str, Any] | None
    payload: dict[str, Any]
    raw: dict[str, Any]
    payment_id: str | None = None


def parse_envelope(obj: dict[str, Any], header_version: int) -> Envelope:
    """Validate the scheme-independent shape of a decoded payment header.

    Args:
        obj: the decoded header JSON.
        header_version: 2 for ``PAYMENT-SIGNATURE``, 1 for ``X-PAYMENT``; the JSON's own
            ``x402Version`` must agree.

    Raises:
        PaymentRejected: ``invalid_x402_version`` or ``invalid_payload`` with the field named.
    """
    version = obj.get("x402Version")
    if version != header_version or isinstance(version, bool):
        raise PaymentRejected(
            Reason.INVALID_VERSION,
            f"x402Version {version!r} does not fit the {'PAYMENT-SIGNATURE' if header_version == 2 else 'X-PAYMENT'} "
            f"header (expected {header_version})",
        )
    accepted: dict[str, Any] | None = None
    if version == 2:
        accepted_raw = obj.get("accepted")
        if not isinstance(accepted_raw, dict):
            raise PaymentRejected(Reason.INVALID_PAYLOAD, "accepted must be an object")
        accepted = accepted_raw
        scheme = _str_field(accepted, "scheme", "accepted")
        network = _str_field(accepted, "network", "accepted")
    else:
        scheme = _str_field(obj, "scheme", "payload")
        network = _str_field(obj, "network", "payload")
    inner = obj.get("payload")
    if not isinstance(inner, dict):
        raise PaymentRejected(Reason.INVALID_PAYLOAD, "payload must be an object")
    return Envelope(version, scheme, network, accepted, inner, obj, _payment_id(obj))


def exact_payment(envelope: Envelope) -> PaymentPayload:
    """The ``exact`` EVM payment an envelope carries (EIP-3009 authorization and signature).

    Raises:
        PaymentRejected: ``invalid_payload`` with the field named.
    """
    inner = envelope.payload
    sig_hex = _str_field(inner, "signature", "payload")
    try:
        if not sig_hex.startswith(("0x", "0X")):
            raise ValueError
        signature = bytes.fromhex(sig_hex[2:])
    except ValueError:
        raise PaymentRejected(Reason.INVALID_PAYLOAD, "payload.signature must be 0x-prefixed hex") from None
    try:
        authorization = TransferWithAuthorization.from_wire(inner.get("authorization"))
    except TypedDataError as exc:
        raise PaymentRejected(Reason.INVALID_PAYLOAD, str(exc)) from None
    return PaymentPayload(
        payment_id=envelope.payment_id,
        version=envelope.version,
        scheme=envelope.scheme,
        network=envelope.network,
        accepted=envelope.accepted,
        authorization=authorization,
        signature=signature,
        raw=envelope.raw,
    )


def parse_payment(obj: dict[str, Any], header_version: int) -> PaymentPayload:
    """`parse_envelope` then `exact_payment`: a decoded header as an ``exact`` payment."""
    return exact_payment(parse_envelope(obj, header_version))
