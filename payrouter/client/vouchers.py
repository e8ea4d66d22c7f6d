"""``batch-settlement`` wire payloads (voucher, deposit, refund) and what servers answer.

Pure data: signing with a `wallets.Signer`, reading ``PAYMENT-RESPONSE`` and corrective 402s,
and one JSON-RPC read of the channel's on-chain totals. Channel bookkeeping is in
`payrouter.client.channel_payer`; stores are in `payrouter.client.channels`.

Wire format (x402 ``batch-settlement``, EVM): amounts are decimal strings, ``withdrawDelay``
a JSON integer, ids and signatures ``0x`` hex.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from dataclasses import dataclass
from typing import Any

import httpx
from eth_utils.crypto import keccak

from wallets import Eip712Domain, ReceiveWithAuthorization, SignatureError, Signer, recover_address
from wallets.channels import (
    BATCH_SETTLEMENT_ADDRESS,
    ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
    MAX_WITHDRAW_DELAY,
    MIN_WITHDRAW_DELAY,
    ChannelConfig,
    Voucher,
    batch_settlement_domain,
    deposit_nonce,
)
from wallets.eip712 import typed_data_digest
from wallets.errors import TypedDataError

__all__ = [
    "BATCH_SCHEME",
    "RECOVERABLE_ERRORS",
    "ChannelReply",
    "ChannelResponseError",
    "CorrectiveState",
    "OnchainChannel",
    "config_for_offer",
    "deposit_payload",
    "read_channel_reply",
    "read_corrective_state",
    "read_onchain_channel",
    "refund_payload",
    "voucher_payload",
    "voucher_signer_of",
]

BATCH_SCHEME = "batch-settlement"
ERR_AMOUNT_MISMATCH = "invalid_batch_settlement_evm_cumulative_amount_mismatch"
ERR_BELOW_CLAIMED = "invalid_batch_settlement_evm_cumulative_amount_below_claimed"
# The only errors after which resyncing the cumulative amount and paying again can succeed.
RECOVERABLE_ERRORS = frozenset({ERR_AMOUNT_MISMATCH, ERR_BELOW_CLAIMED})

_ZERO_ADDRESS = "0x" + "00" * 20
_DIGITS = re.compile(r"[0-9]{1,39}")  # uint128 fits in 39 decimal digits
_CHANNELS_SELECTOR = keccak(text="channels(bytes32)")[:4]


class ChannelResponseError(ValueError):
    """A server's ``batch-settlement`` answer breaks the protocol (e.g. it charged above the maximum)."""


def _hex(data: bytes) -> str:
    return "0x" + data.hex()


def config_for_offer(requirement: dict[str, Any], payer: str, salt: bytes = bytes(32)) -> ChannelConfig:
    """The channel config a ``batch-settlement`` offer implies for ``payer``.

    payer = payerAuthorizer = the agent's key; receiver = ``payTo``; token = ``asset``;
    receiverAuthorizer and withdrawDelay from ``extra``.

    Raises:
        TypedDataError: a field is malformed, receiverAuthorizer is zero, or withdrawDelay is
            not a JSON integer in the contract's range (the official client would silently
            use 900 and be rejected later; refusing up front is clearer).
    """
    extra = requirement.get("extra")
    if not isinstance(extra, dict):
        raise TypedDataError("batch-settlement offer has no extra")
    authorizer = extra.get("receiverAuthorizer")
    if not isinstance(authorizer, str) or authorizer.lower() == _ZERO_ADDRESS:
        raise TypedDataError("batch-settlement offer needs a non-zero extra.receiverAuthorizer")
    delay = extra.get("withdrawDelay")
    if isinstance(delay, bool) or not isinstance(delay, int) or not MIN_WITHDRAW_DELAY <= delay <= MAX_WITHDRAW_DELAY:
        raise TypedDataError(
            f"batch-settlement extra.withdrawDelay must be a JSON integer in {MIN_WITHDRAW_DELAY}..{MAX_WITHDRAW_DELAY}"
        )
    return ChannelConfig(
        payer=payer,
        payer_authorizer=payer,
        receiver=str(requirement.get("payTo", "")),
        receiver_authorizer=authorizer,
        token=str(requirement.get("asset", "")),
        withdraw_delay=delay,
        salt=salt,
    )


def voucher_signer_of(config: ChannelConfig) -> str:
    """Who must have signed the channel's vouchers: payerAuthorizer, else the payer."""
    return config.payer_authorizer if config.has_payer_authorizer else config.payer


def _voucher(signer: Signer, config: ChannelConfig, chain_id: int, max_claimable: int) -> dict[str, str]:
    channel_id = config.channel_id(chain_id)
    signature = signer.sign_typed_data(batch_settlement_domain(chain_id), Voucher(channel_id, max_claimable))
    return {"channelId": _hex(channel_id), "maxClaimableAmount": str(max_claimable), "signature": _hex(signature)}


def voucher_payload(signer: Signer, config: ChannelConfig, chain_id: int, max_claimable: int) -> dict[str, Any]:
    """The inner payload of a voucher-only payment: the server may claim up to ``max_claimable`` in total."""
    return {
        "type": "voucher",
        "channelConfig": config.to_wire(),
        "voucher": _voucher(signer, config, chain_id, max_claimable),
    }


def deposit_payload(
    signer: Signer,
    config: ChannelConfig,
    chain_id: int,
    max_claimable: int,
    deposit: int,
    token_name: str,
    token_version: str,
    valid_for: int,
) -> dict[str, Any]:
    """The inner payload of a deposit (ERC-3009) plus a voucher for ``max_claimable``.

    The agent signs ``ReceiveWithAuthorization(from=payer, to=ERC3009 deposit collector,
    value=deposit, validAfter=0, validBefore=now+valid_for, nonce=keccak(channelId, salt))``
    in the token's domain, with a fresh random salt: the authorization can only fund this
    channel, once.
    """
    channel_id = config.channel_id(chain_id)
    salt = os.urandom(32)
    valid_before = int(time.time()) + valid_for
    auth = ReceiveWithAuthorization(
        from_=signer.address,
        to=ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
        value=deposit,
        valid_after=0,
        valid_before=valid_before,
        nonce=deposit_nonce(channel_id, int.from_bytes(salt, "big")),
    )
    signature = signer.sign_typed_data(Eip712Domain(token_name, token_version, chain_id, config.token), auth)
    payload = voucher_payload(signer, config, chain_id, max_claimable)
    payload["type"] = "deposit"
    payload["deposit"] = {
        "amount": str(deposit),
        "authorization": {
            "erc3009Authorization": {
                "validAfter": "0",
                "validBefore": str(valid_before),
                "salt": _hex(salt),
                "signature": _hex(signature),
            }
        },
    }
    return payload


def refund_payload(
    signer: Signer, config: ChannelConfig, chain_id: int, charged: int, amount: int | None = None
) -> dict[str, Any]:
    """The inner payload asking the server to refund the channel.

    Carries a zero-charge voucher (``max == charged``) so the server can claim what it earned
    before refunding; ``amount`` None asks for everything left.
    """
    payload: dict[str, Any] = {
        "type": "refund",
        "channelConfig": config.to_wire(),
        "voucher": _voucher(signer, config, chain_id, charged),
    }
    if amount is not None:
        payload["amount"] = str(amount)
    return payload


def _obj(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one (servers' answers are untrusted)."""
    return value if isinstance(value, dict) else {}


def _digits(value: Any, name: str) -> int:
    if not isinstance(value, str) or not _DIGITS.fullmatch(value):
        raise ChannelResponseError(f"{name} must be a decimal string, got {str(value)[:40]!r}")
    return int(value)


@dataclass(frozen=True, slots=True)
class ChannelReply:
    """A decoded ``PAYMENT-RESPONSE`` of a ``batch-settlement`` payment.

    Attributes:
        success, transaction, network, payer, error: as the server reports them.
        amount: the transaction's amount (a deposit's or a refund's), None when absent.
        charged: ``extra.chargedAmount`` (0 when absent: the server charged nothing).
        cumulative: ``extra.channelState.chargedCumulativeAmount``, None when absent.
        channel_id: ``extra.channelState.channelId``, None when absent.
    """

    success: bool
    transaction: str
    network: str | None
    payer: str | None
    error: str | None
    amount: int | None
    charged: int
    cumulative: int | None
    channel_id: str | None


def read_channel_reply(value: str, max_amount: int | None) -> ChannelReply:
    """Decode a ``PAYMENT-RESPONSE`` header (base64 JSON).

    Args:
        max_amount: the request's maximum; a successful payment charging more breaks the
            protocol (None: a refund, which charges nothing).

    Raises:
        ChannelResponseError: undecodable, ``chargedAmount`` not a digit string or above
            ``max_amount``, or a malformed cumulative amount.
    """
    try:
        data = json.loads(base64.b64decode(value))
    except ValueError:
        raise ChannelResponseError("PAYMENT-RESPONSE is not base64 JSON") from None
    if not isinstance(data, dict):
        raise ChannelResponseError("PAYMENT-RESPONSE is not a JSON object")
    extra = _obj(data.get("extra"))
    success = data.get("success") is True
    charged = _digits(extra["chargedAmount"], "chargedAmount") if "chargedAmount" in extra else 0
    if success and max_amount is not None and charged > max_amount:
        raise ChannelResponseError(f"the server charged {charged}, above the request's maximum {max_amount}")
    state = _obj(extra.get("channelState"))
    cumulative = state.get("chargedCumulativeAmount")
    raw_amount = data.get("amount")
    return ChannelReply(
        success=success,
        transaction=str(data.get("transaction") or ""),
        network=data.get("network") if isinstance(data.get("network"), str) else None,
        payer=data.get("payer") if isinstance(data.get("payer"), str) else None,
        error=str(data["errorReason"]) if data.get("errorReason") else None,
        amount=int(raw_amount) if isinstance(raw_amount, str) and _DIGITS.fullmatch(raw_amount) else None,
        charged=charged,
        cumulative=None if cumulative is None else _digits(cumulative, "channelState.chargedCumulativeAmount"),
        channel_id=state.get("channelId") if isinstance(state.get("channelId"), str) else None,
    )


@dataclass(frozen=True, slots=True)
class CorrectiveState:
    """What a corrective 402 claims about the channel.

    Attributes:
        error: the 402's ``error``.
        charged: ``channelState.chargedCumulativeAmount`` (None when absent).
        balance: ``channelState.balance`` (None when absent).
        signed_max, signature: ``voucherState`` (None when absent): the last voucher the
            server holds, which proves ``charged`` only if the agent's key signed it.
    """

    error: str
    charged: int | None
    balance: int | None
    signed_max: int | None
    signature: bytes | None

    def voucher_is_ours(self, config: ChannelConfig, chain_id: int) -> bool:
        """True when ``voucherState`` is a voucher for this channel signed by its voucher signer."""
        if self.signed_max is None or self.signature is None:
            return False
        try:
            digest = typed_data_digest(
                batch_settlement_domain(chain_id), Voucher(config.channel_id(chain_id), self.signed_max)
            )
            return recover_address(digest, self.signature) == voucher_signer_of(config)
        except (SignatureError, TypedDataError):
            return False


def _optional_digits(data: dict[str, Any], name: str) -> int | None:
    value = data.get(name)
    return int(value) if isinstance(value, str) and _DIGITS.fullmatch(value) else None


def read_corrective_state(offer_body: dict[str, Any]) -> CorrectiveState | None:
    """The channel state of a corrective 402 (``PaymentRequired`` object), or None when the
    402 is not a recoverable ``batch-settlement`` error."""
    error = offer_body.get("error")
    if error not in RECOVERABLE_ERRORS:
        return None
    accepts = offer_body.get("accepts")
    for req in accepts if isinstance(accepts, list) else []:
        if not isinstance(req, dict) or req.get("scheme") != BATCH_SCHEME:
            continue
        extra = _obj(req.get("extra"))
        channel = _obj(extra.get("channelState"))
        voucher = _obj(extra.get("voucherState"))
        raw_sig = voucher.get("signature")
        signature = None
        if isinstance(raw_sig, str) and re.fullmatch(r"0x[0-9a-fA-F]{130}", raw_sig):
            signature = bytes.fromhex(raw_sig[2:])
        return CorrectiveState(
            error=str(error),
            charged=_optional_digits(channel, "chargedCumulativeAmount"),
            balance=_optional_digits(channel, "balance"),
            signed_max=_optional_digits(voucher, "signedMaxClaimable"),
            signature=signature,
        )
    return CorrectiveState(str(error), None, None, None, None)


@dataclass(frozen=True, slots=True)
class OnchainChannel:
    """``channels(channelId)`` of the settlement contract."""

    balance: int
    total_claimed: int


def read_onchain_channel(rpc_url: str, channel_id: bytes, timeout: float = 10.0) -> OnchainChannel:
    """Read a channel's balance and total claimed with one ``eth_call``.

    Raises:
        ChannelResponseError: the node answered with an error or a malformed result.
        httpx.HTTPError: the node could not be reached.
    """
    call = {"to": BATCH_SETTLEMENT_ADDRESS, "data": _hex(_CHANNELS_SELECTOR + channel_id)}
    body = {"jsonrpc": "2.0", "id": 1, "method": "eth_call", "params": [call, "latest"]}
    reply = httpx.post(rpc_url, json=body, timeout=timeout).json()
    result = reply.get("result") if isinstance(reply, dict) else None
    if not isinstance(result, str) or len(result) != 2 + 128:
        error = reply.get("error") if isinstance(reply, dict) else None
        raise ChannelResponseError(f"channels() read failed: {error or 'malformed result'}")
    raw = bytes.fromhex(result[2:])
    return OnchainChannel(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
