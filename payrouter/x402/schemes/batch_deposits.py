"""Deposits into ``batch-settlement`` channels: the first payment of a channel (or a top-up)
carries the payer's ERC-3009 authorization of the deposit, sent on chain before it is served.

The deposit is checked (bounds, the authorization's window, a simulation through the settler),
sent through the scheme's settler, waited for, journaled and mirrored; the voucher it carries is
then served on the channel. A deposit sent again after its answer was lost is found in the
channel and served on. One whose outcome is lost puts its channel in the store (empty as far as
we know): the claimer mirrors and journals it once it lands.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING

from payrouter.chain import ChainError
from payrouter.channels.contract import ChannelError, ChannelTxFailed, ChannelTxInDoubt, Erc3009Deposit
from payrouter.channels.records import DEPOSIT_PATH
from payrouter.channels.settler import DepositOrder
from payrouter.quoting import PricedRoute
from payrouter.store import StoreError
from payrouter.x402.call import PaidRequest
from payrouter.x402.errors import PaymentRejected
from payrouter.x402.schemes.batch_payload import BatchPayload, ChannelReason
from payrouter.x402.wire import Envelope
from wallets.channels import ChannelConfig

if TYPE_CHECKING:
    from payrouter.x402.schemes.batch import BatchScheme

__all__ = ["ChannelDeposits"]

log = logging.getLogger("payrouter.channels")

# An ERC-3009 deposit authorization must stay valid this long after we check it: the deposit
# is sent at once, and must be mined before it expires.
_VALID_BEFORE_MARGIN = 6


class ChannelDeposits:
    """The deposits of one `BatchScheme` (its table, channel store, settler and journal)."""

    def __init__(self, scheme: BatchScheme) -> None:
        self.scheme = scheme

    async def take(
        self, call: PaidRequest, envelope: Envelope, priced: PricedRoute, payload: BatchPayload, channel_id: str
    ) -> tuple[str, int]:
        """Send the payload's deposit on chain (through the settler), wait for it, journal it
        and mirror the channel; its ``(transaction, amount)`` (``("", 0)`` when it was already
        in the channel).

        Raises:
            PaymentRejected: the deposit breaks a rule (too small, outside its window, refused
                by the simulation), could not be sent, or its outcome is not known (the channel
                is then watched by the claimer).
        """
        scheme = self.scheme
        deposit, config = payload.deposit, payload.config
        assert deposit is not None
        payer = config.payer
        now = int(time.time())
        if deposit.valid_after > now:
            raise PaymentRejected(ChannelReason.VALID_AFTER, "the deposit authorization is not valid yet", payer)
        if deposit.valid_before < now + _VALID_BEFORE_MARGIN:
            raise PaymentRejected(ChannelReason.VALID_BEFORE, "the deposit authorization expires too soon", payer)
        if deposit.amount < scheme.min_deposit:
            raise PaymentRejected(
                ChannelReason.DEPOSIT_BELOW_MIN, f"deposits here are at least {scheme.min_deposit} atomic units", payer
            )
        order = DepositOrder(
            config,
            deposit.amount,
            Erc3009Deposit(deposit.valid_after, deposit.valid_before, deposit.salt, deposit.signature),
            envelope.raw,
            scheme.offer(priced).to_v2(),
        )
        try:
            await scheme.settler.check_deposit(order)
        except ChannelError as exc:
            # the same deposit sent again (its first answer was lost) is already in the
            # channel: the voucher it carries is served on it (and the deposit journaled)
            synced = await scheme.sync_channel(config, channel_id)
            if synced is not None and synced.balance >= payload.signed_max:
                landed = await self._landed(order, deposit.salt)
                if not landed:
                    return "", 0
                await self._journal(call, order, channel_id, landed)
                return landed, deposit.amount
            # a facilitator names the rule the deposit broke; the contract's own refusal is
            # reported as a failed simulation
            reason = (exc.code if isinstance(exc, ChannelTxFailed) else None) or ChannelReason.DEPOSIT_SIMULATION_FAILED
            raise PaymentRejected(reason, f"the deposit would fail: {exc}", payer) from None
        except ChainError as exc:
            raise PaymentRejected(ChannelReason.STATE_UNAVAILABLE, f"the chain is unavailable ({exc})", payer) from None
        try:
            tx = await scheme.settler.deposit(order)
        except ChannelTxInDoubt as exc:
            # its answer was lost: the chain says whether it went through (else it may still
            # land: it is the payer's money in their channel either way)
            landed = await self._landed(order, deposit.salt)
            if not landed:
                await self._watch(config, channel_id)
                raise PaymentRejected(
                    ChannelReason.DEPOSIT_TRANSACTION_FAILED, f"the deposit was sent and not confirmed ({exc})", payer
                ) from None
            tx = landed
        except (ChannelError, ChainError, StoreError) as exc:
            raise PaymentRejected(
                ChannelReason.DEPOSIT_TRANSACTION_FAILED, f"the deposit failed: {exc}", payer
            ) from None
        log.info("deposit: channel=%s payer=%s amount=%d tx=%s", channel_id, payer, deposit.amount, tx)
        await self._journal(call, order, channel_id, tx)
        if await scheme.sync_channel(config, channel_id) is None:
            raise PaymentRejected(ChannelReason.CHANNEL_NOT_FOUND, "the deposit left the channel empty", payer)
        return tx, deposit.amount

    async def _watch(self, config: ChannelConfig, channel_id: str) -> None:
        """Put a channel whose first deposit is in doubt in the store (empty, as far as we
        know): the claimer's passes then mirror its balance once the deposit lands, and journal
        the deposit from the chain's logs. A channel the store has is left as it is (a mirror
        stamped at time 0 never overwrites a newer one)."""
        with contextlib.suppress(StoreError):
            await self.scheme.store.upsert_onchain(
                channel_id,
                config=json.dumps(config.to_wire(), separators=(",", ":")),
                payer=config.payer,
                balance=0,
                total_claimed=0,
                withdraw_requested_at=0,
                refund_nonce=0,
                synced_at_ms=0,
            )

    async def _landed(self, order: DepositOrder, salt: int) -> str | None:
        """The transaction that took ``order``'s deposit, if the chain shows one."""
        try:
            return await self.scheme.contract.find_deposit(order.config, order.amount, salt)
        except ChainError:
            return None

    async def _journal(self, call: PaidRequest, order: DepositOrder, channel_id: str, tx: str) -> None:
        record = self.scheme.movement(
            DEPOSIT_PATH, channel_id, order.config.payer, order.amount, tx, request=call.digest
        )
        await self.scheme.journal_movement(record)
