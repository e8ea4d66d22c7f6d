"""Who sends a channel's transactions: our gas wallet, or a facilitator that supports the scheme.

The gate (deposits, refunds) and the claimer (claims, settles) say *what* to do through
`ChannelSettler`; `GasWalletSettler` does it with the operator's gas wallet and receiver
authorizer key (the local facilitator), `payrouter.facilitator.channels.FacilitatorSettler`
through a remote x402 facilitator's ``/verify`` and ``/settle``. Reads of the contract go
straight to the chain either way (``settler.contract``): the claimer counts money from mined
receipts only, whoever sent them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from payrouter.channels.contract import (
    MAX_CLAIMS_PER_BATCH,
    BatchSettlementContract,
    ClaimRowLike,
    Erc3009Deposit,
    RefundResult,
)
from wallets import Signer
from wallets.channels import ChannelConfig

__all__ = ["ChannelSettler", "DepositOrder", "GasWalletSettler", "RefundOrder", "RefundResult"]


@dataclass(frozen=True, slots=True)
class DepositOrder:
    """A payer's first payment on a channel: its deposit, as parsed and as sent.

    Attributes:
        config: the channel.
        amount: the deposit in atomic units.
        erc3009: the payer's ``ReceiveWithAuthorization`` for it.
        payment: the payment payload exactly as the payer sent it (x402 v2 JSON): a facilitator
            verifies the deposit and its voucher from it.
        requirements: the offer the payer accepted (v2 wire form).
    """

    config: ChannelConfig
    amount: int
    erc3009: Erc3009Deposit
    payment: Mapping[str, Any]
    requirements: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class RefundOrder:
    """A cooperative refund: claim ``claims`` and return up to ``amount`` to the payer, atomically.

    Attributes:
        config: the channel.
        amount: at most this much is returned (the contract caps it at what is unclaimed).
        nonce: the channel's on-chain ``refundNonce`` (the refund spends it).
        claims: rows claiming what was charged and not yet claimed (may be empty).
        voucher_max, voucher_signature: the payer's refund voucher (a facilitator wants it).
    """

    config: ChannelConfig
    amount: int
    nonce: int
    claims: Sequence[ClaimRowLike]
    voucher_max: int
    voucher_signature: bytes


class ChannelSettler(Protocol):
    """Sends the batch-settlement contract's transactions and waits until they are mined.

    Attributes:
        contract: reads of the contract (channel state, receiver totals, receipts' events).
        receiver_authorizer: the address offered as ``receiverAuthorizer``: every channel we
            serve names it, and it signs our claims and refunds (here or at the facilitator).
        max_claim_rows: the most channels one claim transaction may carry (a sender that
            sends with a fixed gas limit fits fewer than the contract's 100).

    Methods raise `payrouter.channels.contract.ChannelTxFailed` (``tx == ""``: refused before
    anything was sent), `ChannelTxInDoubt` (sent, or maybe sent, outcome unknown; never
    "nothing happened"), or `payrouter.chain.ChainError` / `payrouter.store.StoreError`
    (nothing sent).
    """

    contract: BatchSettlementContract
    receiver_authorizer: str
    max_claim_rows: int

    async def check_deposit(self, order: DepositOrder) -> None:
        """Refuse a deposit that would not go through (nothing is sent)."""
        ...

    async def deposit(self, order: DepositOrder) -> str:
        """Send the deposit; its mined transaction's hash."""
        ...

    async def claim(self, rows: Sequence[ClaimRowLike]) -> str:
        """Claim up to 100 channels in one ``claimWithSignature``; the mined transaction's hash.

        Raises:
            ValueError: a row the contract could not take (no rows, more than 100, a channel
                of another authorizer); nothing sent.
        """
        ...

    async def settle(self, receiver: str, token: str) -> tuple[str, int]:
        """Pay ``receiver`` what it claimed and was not paid: ``(transaction, amount)``, or
        ``("", 0)`` when nothing is owed."""
        ...

    async def refund(self, order: RefundOrder) -> RefundResult:
        """Claim and refund in one transaction, counted from its mined receipt."""
        ...


class GasWalletSettler:
    """`ChannelSettler` of the local facilitator: the gas wallet sends, our authorizer key signs.

    Args:
        contract: the contract with the gas wallet's sender.
        authorizer: the receiver authorizer key.
    """

    def __init__(self, contract: BatchSettlementContract, authorizer: Signer) -> None:
        self.contract = contract
        self.authorizer = authorizer
        self.receiver_authorizer: str = authorizer.address
        self.max_claim_rows = MAX_CLAIMS_PER_BATCH

    def __repr__(self) -> str:
        return f"GasWalletSettler(contract={self.contract.address}, authorizer={self.receiver_authorizer})"

    async def check_deposit(self, order: DepositOrder) -> None:
        await self.contract.simulate_deposit(order.config, order.amount, order.erc3009)

    async def deposit(self, order: DepositOrder) -> str:
        return await self.contract.deposit(order.config, order.amount, order.erc3009)

    async def claim(self, rows: Sequence[ClaimRowLike]) -> str:
        return await self.contract.claim_with_signature(rows, self.authorizer)

    async def settle(self, receiver: str, token: str) -> tuple[str, int]:
        return await self.contract.settle(receiver, token)

    async def refund(self, order: RefundOrder) -> RefundResult:
        return await self.contract.refund(order.config, order.amount, order.nonce, order.claims, self.authorizer)
