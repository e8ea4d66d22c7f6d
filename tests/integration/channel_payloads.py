"""Build real (and deliberately wrong) batch-settlement payments for the integration tests.

Signed with our typed data (`wallets.channels`), pinned to the official SDK by its own tests.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from wallets import Eip712Domain, LocalSigner, ReceiveWithAuthorization, sign_authorization
from wallets.channels import (
    ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
    ChannelConfig,
    Voucher,
    batch_settlement_domain,
    deposit_nonce,
)


def batch_offer(offer_: dict[str, Any]) -> dict[str, Any]:
    """The batch-settlement entry of a decoded PAYMENT-REQUIRED."""
    found: dict[str, Any] = next(a for a in offer_["accepts"] if a["scheme"] == "batch-settlement")
    return found


def config_for(requirement: dict[str, Any], payer: LocalSigner, salt: int = 0) -> ChannelConfig:
    """The channel a payer opens against an offer (payer = payer authorizer)."""
    extra = requirement["extra"]
    return ChannelConfig(
        payer=payer.address,
        payer_authorizer=payer.address,
        receiver=requirement["payTo"],
        receiver_authorizer=extra["receiverAuthorizer"],
        token=requirement["asset"],
        withdraw_delay=int(extra["withdrawDelay"]),
        salt=salt.to_bytes(32, "big"),
    )


def voucher_payment(
    offer_: dict[str, Any],
    config: ChannelConfig,
    signed_max: int,
    signer: LocalSigner,
    *,
    chain_id: int,
    channel_id: bytes | None = None,
    deposit: int | None = None,
    token: LocalSigner | None = None,
    token_domain: Eip712Domain | None = None,
) -> dict[str, Any]:
    """A voucher (or, with ``deposit``, a deposit) payment for ``offer_``'s batch entry.

    ``channel_id`` overrides the voucher's channel id (the signature covers the one sent).
    """
    requirement = batch_offer(offer_)
    cid = channel_id or config.channel_id(chain_id)
    signature = signer.sign_typed_data(batch_settlement_domain(chain_id), Voucher(cid, signed_max))
    payload: dict[str, Any] = {
        "type": "voucher",
        "channelConfig": config.to_wire(),
        "voucher": {
            "channelId": "0x" + cid.hex(),
            "maxClaimableAmount": str(signed_max),
            "signature": "0x" + signature.hex(),
        },
    }
    if deposit is not None:
        assert token is not None and token_domain is not None
        salt = secrets.randbits(256)
        valid_before = int(time.time()) + 300
        auth = ReceiveWithAuthorization(
            token.address, ERC3009_DEPOSIT_COLLECTOR_ADDRESS, deposit, 0, valid_before, deposit_nonce(cid, salt)
        )
        payload["type"] = "deposit"
        payload["deposit"] = {
            "amount": str(deposit),
            "authorization": {
                "erc3009Authorization": {
                    "validAfter": "0",
                    "validBefore": str(valid_before),
                    "salt": "0x" + salt.to_bytes(32, "big").hex(),
                    "signature": "0x" + sign_authorization(token, token_domain, auth).hex(),
                }
            },
        }
    return {"x402Version": 2, "accepted": requirement, "resource": offer_["resource"], "payload": payload}


def opening_payment(
    offer_: dict[str, Any], config: ChannelConfig, payer: LocalSigner, *, chain_id: int, token_domain: Eip712Domain
) -> dict[str, Any]:
    """A channel's first payment: its ``minDeposit`` from ``payer`` and the voucher for ``offer_``'s amount."""
    requirement = batch_offer(offer_)
    return voucher_payment(
        offer_,
        config,
        int(requirement["amount"]),
        payer,
        chain_id=chain_id,
        deposit=int(requirement["extra"]["minDeposit"]),
        token=payer,
        token_domain=token_domain,
    )


def refund_payment(
    probe: dict[str, Any],
    config: ChannelConfig,
    charged: int,
    signer: LocalSigner,
    *,
    chain_id: int,
    amount: int | None,
) -> dict[str, Any]:
    """A refund request (a zero-charge voucher at ``charged``) for the offer of a refund probe."""
    requirement = batch_offer(probe)
    cid = config.channel_id(chain_id)
    signature = signer.sign_typed_data(batch_settlement_domain(chain_id), Voucher(cid, charged))
    payload: dict[str, Any] = {
        "type": "refund",
        "channelConfig": config.to_wire(),
        "voucher": {
            "channelId": "0x" + cid.hex(),
            "maxClaimableAmount": str(charged),
            "signature": "0x" + signature.hex(),
        },
    }
    if amount is not None:
        payload["amount"] = str(amount)
    return {"x402Version": 2, "accepted": requirement, "resource": probe["resource"], "payload": payload}
