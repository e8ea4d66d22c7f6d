"""Channel transactions through a remote x402 facilitator that supports ``batch-settlement``.

Deposits are the payer's payment forwarded as it came (``/verify``, then ``/settle``); claims,
settles and refunds are the settle actions of the scheme's facilitator API (``/settle`` with
a ``claim``, ``settle`` or ``refund`` payload and ``amount: "0"`` requirements). The receiver
authorizer either is our own key (we sign every claim batch and refund and send the
signatures) or the facilitator's (we send none, and it signs).

The facilitator's word is not what gets counted: every transaction it reports is looked up
on chain (mined, status 1; a deposit or refund must show its event for the channel), and
amounts are read from the receipt's events, exactly as for our own transactions. A reply lost
after the request left, a 5xx, or a ``*_transaction_failed`` without a hash is a transaction
in doubt, never "nothing happened"; a 4xx or a refusal of the facilitator's own (no
authorizer key, a chain read failed) is `ChannelUnavailable`: nothing was sent.

The facilitator's free-text messages go to the log (web addresses masked), never to payers:
they can carry its node's URL and key.
"""

from __future__ import annotations

import logging
import re
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
    check_claim_rows,
)
from payrouter.channels.settler import DepositOrder, RefundOrder, RefundResult
from payrouter.facilitator.remote import RemoteFacilitator
from payrouter.x402.errors import Reason
from wallets import Signer

__all__ = ["BATCH_SETTLEMENT", "FACILITATOR_CLAIM_ROWS", "FacilitatorSettler"]

BATCH_SETTLEMENT = "batch-settlement"
# the facilitator answers a settle that finds nothing owed with this reason
_NOTHING_TO_SETTLE = "invalid_batch_settlement_evm_nothing_to_settle"
_SETTLEMENT_PENDING = "settlement_pending"
# The official facilitator sends every transaction with a fixed 500,000 gas; a claim costs
# ~54k + ~24k a row, so 15 rows leave room (100, the contract's cap, would run out of gas).
FACILITATOR_CLAIM_ROWS = 15
# A settle action waits for its block at the facilitator (up to 120 s in the official one):
# a shorter timeout here would turn slow blocks into transactions in doubt.
_SETTLE_TIMEOUT_S = 150.0
_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://\S+")

log = logging.getLogger("payrouter.facilitator.channels")


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
        max_claim_rows: channels per claim transaction (see `FACILITATOR_CLAIM_ROWS`).
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
        max_claim_rows: int = FACILITATOR_CLAIM_ROWS,
    ) -> None:
        if authorizer is not None and authorizer.address != receiver_authorizer:
            raise ValueError("the authorizer key is not the receiver authorizer")
        if not 1 <= max_claim_rows <= MAX_CLAIMS_PER_BATCH:
            raise ValueError(f"max_claim_rows must be 1..{MAX_CLAIMS_PER_BATCH}")
        self.facilitator = facilitator
        self.contract = contract
        self.chain = chain
        self.network = network
        self.receiver_authorizer = receiver_authorizer
        self.authorizer = authorizer
        self.receipt_timeout = receipt_timeout
        self.max_claim_rows = max_claim_rows

    def __repr__(self) -> str:
        signs = "us" if self.authorizer is not None else "the facilitator"
        return f"FacilitatorSettler({self.facilitator!r}, authorizer={self.receiver_authorizer} signed by {signs})"

    # ------------------------------------------------------------------ deposits

    async def check_deposit(self, order: DepositOrder) -> None:
        body = _body(order.payment, order.requirements)
        try:
            data = await self.facilitator.post("verify", body)
        except httpx.HTTPError as exc:
            _log_refusal("verify", type(exc).__name__, str(exc))
            raise ChannelUnavailable("the facilitator could not be asked", code=Reason.UNEXPECTED_VERIFY) from None
        if data.get("isValid") is not True:
            reason = str(data.get("invalidReason") or Reason.UNEXPECTED_VERIFY)
            _log_refusal("verify", reason, data.get("invalidMessage"))
            raise ChannelTxFailed(f"the facilitator refused the deposit ({reason})", code=reason)

    async def deposit(self, order: DepositOrder) -> str:
        receipt = await self._settle(_body(order.payment, order.requirements))
        if not self.contract.took_deposit(receipt, order.config, order.amount, order.erc3009.salt):
            # not this deposit (another transaction, or an old one of the same amount)
            raise ChannelTxInDoubt("the facilitator's transaction holds no such deposit", receipt.transaction_hash)
        return receipt.transaction_hash

    # ------------------------------------------------------------ settle actions

    async def claim(self, rows: Sequence[ClaimRowLike]) -> str:
        check_claim_rows(rows, self.receiver_authorizer, self.max_claim_rows)
        first = rows[0][0]
        if any((config.receiver, config.token) != (first.receiver, first.token) for config, *_ in rows):
            raise ValueError("one claim batch pays one receiver in one token")
        payload: dict[str, Any] = {"type": "claim", "claims": _claims(rows)}
        if self.authorizer is not None:
            payload["claimAuthorizerSignature"] = _hex(self.contract.claim_signature(rows, self.authorizer))
        # what it claimed is counted from the receipt's Claimed events by the caller
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

    async def refund(self, order: RefundOrder) -> RefundResult:
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
        refunded = self.contract.refund_of(receipt, channel_id, order.nonce)
        if refunded is None:  # not our refund (another transaction, or an old one)
            raise ChannelTxInDoubt(
                "the facilitator's transaction holds no refund of this nonce", receipt.transaction_hash
            )
        return RefundResult(receipt.transaction_hash, refunded, self.contract.claimed_in(receipt, config.receiver))

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
            raise ChannelTxFailed("the facilitator found nothing to do", code=_NOTHING_TO_SETTLE)
        return receipt

    async def _settle_or_nothing(self, body: dict[str, Any]) -> Receipt | None:
        """`_settle`, or None when the facilitator found nothing owed (a settle action)."""
        try:
            data = await self.facilitator.post("settle", body, timeout=_SETTLE_TIMEOUT_S)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            _log_refusal("settle", type(exc).__name__, str(exc))
            raise ChannelUnavailable("the facilitator could not be reached", code=Reason.UNEXPECTED_SETTLE) from None
        except httpx.HTTPStatusError as exc:
            status = exc.response.status_code
            _log_refusal("settle", f"HTTP {status}", exc.response.text[:300])
            if 400 <= status < 500:  # refused before doing anything (auth, unknown scheme, bad request)
                raise ChannelUnavailable(
                    f"the facilitator answered HTTP {status}", code=Reason.UNEXPECTED_SETTLE
                ) from None
            raise ChannelTxInDoubt(f"the facilitator answered HTTP {status}") from None
        except httpx.HTTPError as exc:
            # the request left: the facilitator may have sent the transaction
            _log_refusal("settle", type(exc).__name__, str(exc))
            raise ChannelTxInDoubt(f"the facilitator's reply was lost ({type(exc).__name__})") from None
        tx = str(data.get("transaction") or "")
        if data.get("success") is True:
            if not tx:
                raise ChannelTxInDoubt("the facilitator reported success without a transaction")
            return await self._mined(tx)
        reason = str(data.get("errorReason") or Reason.UNEXPECTED_SETTLE)
        if reason == _NOTHING_TO_SETTLE:
            return None
        _log_refusal("settle", reason, data.get("errorMessage"))
        if reason == _SETTLEMENT_PENDING:
            raise ChannelTxInDoubt("the facilitator sent it and it is not confirmed yet", tx)
        if tx:
            # a failure that names a transaction: the chain says what it did
            return await self._mined(tx, failed=f"the facilitator reports it failed ({reason})")
        if reason.endswith("_simulation_failed"):
            raise ChannelTxFailed(f"it would revert ({reason})", code=reason)  # its rows are at fault
        if reason.endswith("_transaction_failed"):
            # the official facilitator reports a send that raised this way, even when the
            # node took the transaction before the error
            raise ChannelTxInDoubt(f"the facilitator's send failed ({reason}) and may have gone out")
        raise ChannelUnavailable(f"the facilitator refused ({reason})", code=reason)

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


def _log_refusal(endpoint: str, reason: str, message: Any) -> None:
    text = _URL.sub("<url>", str(message or ""))[:300]
    log.warning("facilitator /%s: %s %s", endpoint, reason, text)


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
