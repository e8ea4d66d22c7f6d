"""A facilitator without a chain, for fast in-process tests of the payment gate.

It checks what a facilitator checks off chain (recipient, value, expiry, the EIP-3009
signature, with the real recovery code) and settles with whatever outcome the test queues.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from typing import Literal

from payrouter.facilitator import SettleResult
from payrouter.x402.errors import PaymentRejected, Reason, SettlementFailed, SettlementInDoubt
from payrouter.x402.requirements import Requirements
from payrouter.x402.wire import PaymentPayload
from wallets import Eip712Domain, recover_authorizer

Outcome = Literal["settle", "doubt", "refuse"]


class FakeFacilitator:
    """`payrouter.facilitator.Facilitator` with scripted settlements (``settle`` by default)."""

    def __init__(self) -> None:
        self.outcomes: deque[Outcome] = deque()
        self.settled: list[str] = []  # transaction hashes, in order
        self.settle_calls = 0

    async def verify(self, payment: PaymentPayload, requirements: Requirements) -> str:
        auth = payment.authorization
        if auth.to.lower() != requirements.pay_to.lower():
            raise PaymentRejected(Reason.RECIPIENT_MISMATCH, "authorization.to is not payTo", auth.from_)
        if auth.value != requirements.amount:
            raise PaymentRejected(Reason.VALUE_MISMATCH, "authorization.value is not the amount", auth.from_)
        if auth.valid_before < time.time() + 6:
            raise PaymentRejected(Reason.VALID_BEFORE, "expired", auth.from_)
        extra = requirements.extra
        domain = Eip712Domain(extra["name"], extra["version"], requirements.chain_id, requirements.asset)
        if recover_authorizer(domain, auth, payment.signature) != auth.from_:
            raise PaymentRejected(Reason.SIGNATURE, "signature is not by authorization.from", auth.from_)
        return auth.from_

    async def settle(self, payment: PaymentPayload, requirements: Requirements) -> SettleResult:
        self.settle_calls += 1
        outcome = self.outcomes.popleft() if self.outcomes else "settle"
        payer = payment.authorization.from_
        tx = "0x" + secrets.token_hex(32)
        if outcome == "doubt":
            raise SettlementInDoubt("broadcast, not confirmed", payer, tx)
        if outcome == "refuse":
            raise SettlementFailed(Reason.TRANSACTION_FAILED, "reverted", payer, tx)
        self.settled.append(tx)
        return SettleResult(transaction=tx, payer=payer, network=requirements.network)

    async def close(self) -> None:
        return None
