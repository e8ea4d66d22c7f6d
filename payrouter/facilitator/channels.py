"""Channel transactions through a remote x402 facilitator that supports ``batch-settlement``.

Deposits are the payer's payment forwarded as it came (``/verify``, then ``/settle``); claims,
settles and refunds are the settle actions of the scheme's facilitator API (``/settle`` with
a ``claim``, ``settle`` or ``refund`` payload and ``amount: "0"`` requirements). The receiver
authorizer either is our own key (we sign every claim batch and refund and send the
signatures) or the facilitator's (we send none, and it signs).

The facilitator's word is not what gets counted: every transaction it reports is looked up
on chain (mined, status 1), and amounts are read from the receipt's events, exactly as for
our own transactions. A reply lost after the request left is a transaction in doubt, never
"nothing happened".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from payrouter.chain import ChainClient, ChainError, Receipt
from payrouter.channels.contract import (
    MAX_CLAIMS_PER_BATCH,
    BatchSettlementContract,
    ChannelTxFailed,
    ChannelTxInDoubt,
    ChannelUnavailable,
    ClaimRowLike,
)
from payrouter.channels.settler import DepositOrder, RefundOrder
from payrouter.facilitator.remote import RemoteFacilitator
from payrouter.x402.errors import Reason
from wallets import Signer

__all__ = ["BATCH_SETTLEMENT", "FacilitatorSettler"]

BATCH_SETTLEMENT = "batch-settlement"
# the facilitator answers a settle that finds nothing owed with this reason
_NOTHING_TO_SETTLE = "invalid_batch_settlement_evm_nothing_to_settle"
_SETTLEMENT_PENDING = "settlement_pending"


def _hex(data: bytes) -> str:
    return "0x" + data.hex()


class FacilitatorSettler:
    """`payrouter.channels.settler.ChannelSettler` over a remote facilitator.

    Args:
        facilitator: the facilitator's HTTP client (its auth headers apply).
        contract: read-only access to the contract (channel totals, receipts' events, the
            EIP-712 domain our own authorizer signs in).
        chain: reads the receipts of what the facilitator sends.
        network: ``eip155:<chain id>``.
        receiver_authorizer: the address channels name as ``receiverAuthorizer``.
        authorizer: our key for that address, or None when the facilitator holds it.
        receipt_timeout: seconds to wait for a reported transaction's receipt before it is
            in doubt.
    """

    def __init__(
        self,
        facilitator: RemoteFacilitator,
        contract: BatchSettlementContract,
        chain: ChainClient,
        network: str,
        receiver_authorizer: str,
        authorizer: Signer | None = None,
        receipt_timeout: float = 30.0,
    ) -> None:
        if authorizer is not None and authorizer.address != receiver_authorizer:
            raise ValueError("the authorizer key is not the receiver authorizer")
        self.facilitator = facilitator
        self.contract = contract
        self.chain = chain
        self.network = network
        self.receiver_authorizer = receiver_authorizer
        self.authorizer = authorizer
        self.receipt_timeout = receipt_timeout

    def __repr__(self) -> str:
        signs = "us" if self.authorizer is not None else "the facilitator"
        return f"FacilitatorSettler({self.facilitator!r}, authorizer={self.receiver_authorizer} signed by {signs})"

    # ------------------------------------------------------------------ deposits

    async def check_deposit(self, order: DepositOrder) -> None:
        body = _body(order.payment, order.requirements)
        try:
            data = await self.facilitator.post("verify", body)
        except httpx.HTTPError as exc:
            raise ChannelUnavailable(f"facilitator unreachable: {exc}", code=Reason.UNEXPECTED_VERIFY) from None
        if data.get("isValid") is not True:
            reason = str(data.get("invalidReason") or Reason.UNEXPECTED_VERIFY)
            message = str(data.get("invalidMessage") or "the facilitator refused the deposit")
            raise ChannelTxFailed(f"{reason}: {message}", code=reason)

    async def deposit(self, order: DepositOrder) -> str:
        receipt = await self._settle(_body(order.payment, order.requirements))
        return receipt.transaction_hash

    # ------------------------------------------------------------ settle actions

    async def claim(self, rows: Sequence[ClaimRowLike]) -> str:
        if not rows:
            raise ValueError("a claim needs at least one row")
        if len(rows) > MAX_CLAIMS_PER_BATCH:
            raise ValueError(f"{len(rows)} claim rows; at most {MAX_CLAIMS_PER_BATCH} per transaction")
        first = rows[0][0]
        for config, *_ in rows:
            if config.receiver_authorizer != self.receiver_authorizer:
                raise ValueError("every claimed channel's receiverAuthorizer must be the receiver authorizer")
            if (config.receiver, config.token) != (first.receiver, first.token):
                raise ValueError("one claim batch pays one receiver in one token")
        payload: dict[str, Any] = {"type": "claim", "claims": _claims(rows)}
        if self.authorizer is not None:
            payload["claimAuthorizerSignature"] = _hex(self.contract.claim_signature(rows, self.authorizer))
        receipt = await self._settle(self._action(payload, first.receiver, first.token))
        return receipt.transaction_hash

    async def settle(self, receiver: str, token: str) -> tuple[str, int]:
        claimed, settled = await self.contract.receiver_totals(receiver, token)
        if claimed == settled:
            return "", 0
        payload = {"type": "settle", "receiver": receiver, "token": token}
        receipt = await self._settle_or_nothing(self._action(payload, receiver, token))
        if receipt is None:
            return "", 0
        return receipt.transaction_hash, self.contract.settled_in(receipt, receiver)

    async def refund(self, order: RefundOrder) -> tuple[str, int]:
        config = order.config
        if order.amount <= 0:
            raise ValueError("a refund amount must be positive")
        if config.receiver_authorizer != self.receiver_authorizer:
            raise ValueError("the channel's receiverAuthorizer is not the receiver authorizer")
        channel_id = config.channel_id(self.contract.chain_id)
        payload: dict[str, Any] = {
            "type": "refund",
            "channelConfig": config.to_wire(),
            "voucher": {
                "channelId": _hex(channel_id),
                "maxClaimableAmount": str(order.voucher_max),
                "signature": _hex(order.voucher_signature),
            },
            "amount": str(order.amount),
            "refundNonce": str(order.nonce),
            "claims": _claims(order.claims),
        }
        if self.authorizer is not None:
            signature = self.contract.refund_signature(config, order.amount, order.nonce, self.authorizer)
            payload["refundAuthorizerSignature"] = _hex(signature)
            if order.claims:
                payload["claimAuthorizerSignature"] = _hex(self.contract.claim_signature(order.claims, self.authorizer))
        receipt = await self._settle(self._action(payload, config.receiver, config.token))
        return receipt.transaction_hash, self.contract.refunded_in(receipt, channel_id)

    # ------------------------------------------------------------------ plumbing

    def _action(self, payload: dict[str, Any], receiver: str, token: str) -> dict[str, Any]:
        """A settle action's request: the scheme's payload under ``amount: "0"`` requirements."""
        requirements = {
            "scheme": BATCH_SETTLEMENT,
            "network": self.network,
            "asset": token,
            "amount": "0",
            "payTo": receiver,
            "maxTimeoutSeconds": 0,
            "extra": {},
        }
        return _body({"x402Version": 2, "payload": payload, "accepted": requirements}, requirements)

    async def _settle(self, body: dict[str, Any]) -> Receipt:
        """POST /settle; the mined receipt of the transaction the facilitator reports."""
        receipt = await self._settle_or_nothing(body)
        if receipt is None:
            raise ChannelTxFailed(f"{_NOTHING_TO_SETTLE}: the facilitator found nothing to do", code=_NOTHING_TO_SETTLE)
        return receipt

    async def _settle_or_nothing(self, body: dict[str, Any]) -> Receipt | None:
        """`_settle`, or None when the facilitator found nothing owed (a settle action)."""
        try:
            data = await self.facilitator.post("settle", body)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ChannelUnavailable(f"facilitator unreachable: {exc}", code=Reason.UNEXPECTED_SETTLE) from None
        except httpx.HTTPError as exc:
            # the request left: the facilitator may have sent the transaction
            raise ChannelTxInDoubt(f"facilitator reply lost: {exc}") from None
        tx = str(data.get("transaction") or "")
        if data.get("success") is True:
            if not tx:
                raise ChannelTxInDoubt("the facilitator reported success without a transaction")
            return await self._mined(tx)
        reason = str(data.get("errorReason") or Reason.UNEXPECTED_SETTLE)
        message = f"{reason}: {data.get('errorMessage') or 'the facilitator could not settle'}"
        if reason == _NOTHING_TO_SETTLE:
            return None
        if reason == _SETTLEMENT_PENDING:
            raise ChannelTxInDoubt(message, tx)
        if tx:
            # a failure that names a transaction: the chain says what it did
            return await self._mined(tx, failed=message)
        if reason.endswith("_simulation_failed"):
            raise ChannelTxFailed(message, code=reason)  # the transaction would revert: its rows are at fault
        raise ChannelUnavailable(message, code=reason)

    async def _mined(self, tx: str, failed: str = "") -> Receipt:
        try:
            receipt = await self.chain.wait_for_receipt(tx, self.receipt_timeout)
        except ChainError as exc:
            raise ChannelTxInDoubt(f"sent by the facilitator, receipt unavailable ({exc})", tx) from None
        if receipt is None:
            raise ChannelTxInDoubt(failed or "sent by the facilitator, not mined in time", tx)
        if receipt.status != 1:
            raise ChannelTxFailed(failed or "reverted on chain", tx)
        return receipt


def _body(payment: Mapping[str, Any], requirements: Mapping[str, Any]) -> dict[str, Any]:
    return {"x402Version": 2, "paymentPayload": dict(payment), "paymentRequirements": dict(requirements)}


def _claims(rows: Sequence[ClaimRowLike]) -> list[dict[str, Any]]:
    return [
        {
            "voucher": {"channel": config.to_wire(), "maxClaimableAmount": str(signed_max)},
            "signature": _hex(signature),
            "totalClaimed": str(total),
        }
        for config, signed_max, signature, total in rows
    ]
