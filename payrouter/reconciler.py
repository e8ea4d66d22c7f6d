"""Drives every open journal record to a final state from the chain's truth.

`Resolver.resolve` decides one record; `Reconciler` runs it over every open record, in the
background of ``payrouter serve`` (one instance at a time, under a store lock) and from
``payrouter ledger reconcile``. Each decision is a compare-and-set on the record's owner and
state, and the chain's nonces make a second broadcast of one authorization harmless, so runs
may overlap with each other and with live traffic.

A ``claimed`` or ``serving`` record (its worker has not settled yet) is decided only when the
chain shows its money moved to us (``settled``: a front-runner's transfer; the worker, if still
alive, answers from the settled record); anything else about it is its worker's until the
authorization expires, since only the worker knows what it delivered (a payer cancelling its
authorization mid-stream owes the stream). For the other open records, and for those once
expired, the rules, for an authorization the chain says is

- *used to pay us*: ``settled`` (the transaction from our hash, or the one whose
  ``AuthorizationUsed`` log the payment's ``Transfer`` directly follows:
  `payrouter.facilitator.onchain.pays`);
- *used otherwise* (cancelled, or its nonce spent by another authorization of the payer's):
  nothing will move: ``released``, or ``unpaid`` for a stream whose content went out;
- *unused and expired* (``validBefore`` passed): nothing can move any more: ``released``, or
  ``unpaid`` for a stream whose content went out;
- *unused and valid*: ``pending`` whose transaction the node no longer knows, or whose
  transaction reverted, is broadcast again (or becomes ``owed``/``released``); ``owed`` and
  stale ``settling`` records (their worker is gone; the answer is kept) are settled now.

Records of the ``batch-settlement`` scheme are not payments of their own (a voucher's money
reaches us by a channel claim): they are left to the channel claimer, which also releases
voucher records whose request died.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

from payrouter.chain import (
    AUTHORIZATION_CANCELED_TOPIC,
    AUTHORIZATION_USED_TOPIC,
    ChainClient,
    ChainError,
    encode_authorization_state,
)
from payrouter.channels.records import SCHEME as BATCH_SCHEME
from payrouter.facilitator import Facilitator
from payrouter.facilitator.onchain import pays, used_to_pay
from payrouter.journal import Journal, PaymentRecord, State, now_ms
from payrouter.quoting import PricedRoute
from payrouter.store import Store, StoreError, keys
from payrouter.x402.errors import PaymentError, SettlementFailed, SettlementInDoubt
from payrouter.x402.wire import parse_payment

__all__ = ["ReconcileReport", "Reconciler", "Resolver"]

log = logging.getLogger("payrouter.reconciler")

# Chain clocks and ours differ a little: an authorization counts as expired only this long
# after its validBefore.
EXPIRY_MARGIN_S = 30
# A settling record untouched this long has lost its worker.
STALE_MS = 60_000
# The longest a record stays open, whatever its authorization's validBefore says.
MAX_RECORD_LIFE_S = 24 * 3600
# The chain's logs of a record are searched from this long before it was opened (clock skew).
SEARCH_MARGIN_S = 3600
# A pass that crashed holding the lock blocks others at most this long.
LOCK_TTL_S = 300


def _delivered(record: PaymentRecord) -> bool:
    """The payer received content of this stream (so a failed payment leaves a debt)."""
    return record.stream and record.delivered in ("streaming", "partial", "complete", "cut")


def _topic(address: str) -> str:
    return "0x" + "0" * 24 + address[2:].lower()


class Resolver:
    """Decides one record from the chain (see the module docstring for the rules).

    Args:
        journal: where records live.
        chain: read access to the settlement chain.
        facilitator: settles again when the rules say so.
    """

    def __init__(self, journal: Journal, chain: ChainClient | None, facilitator: Facilitator) -> None:
        self.journal = journal
        self.chain = chain
        self.facilitator = facilitator

    async def _write(self, record: PaymentRecord, state: str, **changes: object) -> PaymentRecord:
        new = record.moved(state, **changes)
        written, stored = await self.journal.advance(new, [record.state], drop_answer=state == State.RELEASED)
        if written:
            log.info("reconciled %s: %s -> %s (%s)", record.id, record.state, state, changes.get("reason", ""))
            return new
        return await self.journal.get(record.id) or record

    async def _used(self, record: PaymentRecord) -> bool:
        assert self.chain is not None
        data = encode_authorization_state(record.payer, bytes.fromhex(record.nonce[2:]))
        return int(await self.chain.eth_call(record.asset, data), 16) != 0

    async def _how_used(self, record: PaymentRecord) -> str | None:
        """For an authorization the token reports used: the transaction that moved *this*
        payment to ``pay_to``; ``""`` when it never will (cancelled, or its nonce spent by
        another authorization of the payer's); None while the chain does not say which.

        Only the ``Transfer`` that directly follows the nonce's ``AuthorizationUsed`` is the
        payment (`payrouter.facilitator.onchain.pays`): not a used nonce alone, nor another
        transfer to ``pay_to`` in the same transaction. The logs are searched from a little
        before the record was opened (the authorization was unused when it was verified).
        """
        assert self.chain is not None
        if record.tx:
            receipt = await self.chain.receipt(record.tx)
            if receipt is not None and receipt.status == 1 and self._pays(receipt.logs, record):
                return record.tx
        payer = _topic(record.payer)
        since = record.created_at / 1000 - SEARCH_MARGIN_S
        for used in await self.chain.logs_since(record.asset, [AUTHORIZATION_USED_TOPIC, payer, record.nonce], since):
            paid = await used_to_pay(
                self.chain,
                used,
                asset=record.asset,
                payer=record.payer,
                nonce=record.nonce,
                pay_to=record.pay_to,
                amount=record.amount,
            )
            return str(used["transactionHash"]) if paid else ""
        cancelled = [AUTHORIZATION_CANCELED_TOPIC, payer, record.nonce]
        if await self.chain.logs_since(record.asset, cancelled, since):
            return ""
        return None

    @staticmethod
    def _pays(logs: list[dict[str, Any]], record: PaymentRecord) -> bool:
        return pays(
            logs, asset=record.asset, payer=record.payer, nonce=record.nonce, pay_to=record.pay_to, amount=record.amount
        )

    async def resolve(self, record: PaymentRecord, settle: bool = True) -> PaymentRecord:
        """Drive ``record`` as far as the chain allows; returns it as it is stored now.

        ``settle`` allows broadcasting (owed, stale settling, lost pending transactions).
        ``batch-settlement`` records are returned as they are: their money moves by channel
        claims, which the channel claimer decides (`payrouter.channels.claimer`).
        Raises ChainError or StoreError when the chain or the store cannot be read.
        """
        if record.scheme == BATCH_SCHEME:
            return record
        if self.chain is None or record.state not in (
            State.CLAIMED,
            State.SERVING,
            State.SETTLING,
            State.PENDING,
            State.OWED,
        ):
            return record
        expired = time.time() > self._end_of_life(record)
        # a worker still within the authorization's life decides from what it knows (what it
        # delivered): deciding from the chain alone would release a stream the payer
        # cancelled mid-way, losing the debt
        live = record.state in (State.CLAIMED, State.SERVING) and not expired
        if await self._used(record):
            how = await self._how_used(record)
            if how is None and not expired:
                return record  # used, but the logs do not say how yet: look again next time
            if how is None:
                # used before the record was opened (its worker died before refusing it): not
                # a payment of this record's, and nothing about it changes any more
                how = ""
            if how:
                return await self._write(
                    record, State.SETTLED, tx=how, settled_at=now_ms(), charged=record.amount, reason=""
                )
            if live:
                return record
            # cancelled, or its nonce spent elsewhere: this payment will never move
            state = State.UNPAID if _delivered(record) else State.RELEASED
            return await self._write(record, state, reason="authorization_not_payable")
        if live:
            return record
        if expired:
            # unused and expired: nothing can move any more
            delivered = _delivered(record) and record.state in (State.OWED, State.PENDING, State.SETTLING)
            state = State.UNPAID if delivered else State.RELEASED
            return await self._write(record, state, reason=record.reason or "expired_unused")
        if record.state == State.SETTLING and now_ms() - record.updated_at < STALE_MS:
            return record
        if record.state == State.PENDING and record.tx:
            receipt = await self.chain.receipt(record.tx)
            if receipt is None and await self.chain.call("eth_getTransactionByHash", [record.tx]) is not None:
                return record  # still waiting in the mempool
        if not settle:
            return record
        return await self._settle(record)

    @staticmethod
    def _end_of_life(record: PaymentRecord) -> int:
        """When nothing about ``record`` can change any more: its authorization's expiry, but
        never more than a day after it was opened (a far-future ``validBefore`` keeps nothing
        open for ever)."""
        return min(record.valid_before, record.created_at // 1000 + MAX_RECORD_LIFE_S) + EXPIRY_MARGIN_S

    async def _settle(self, record: PaymentRecord) -> PaymentRecord:
        try:
            payment = parse_payment(record.payment_object(), record.x402_version)
            requirements = PricedRoute.from_record(record.route.encode()).requirements
        except (PaymentError, ValueError, KeyError) as exc:
            log.error("record %s cannot be settled again: %s", record.id, exc)
            return record
        try:
            # a transfer that would revert is not broadcast: a debtor presenting its payment
            # again must not make us pay gas for nothing
            await self.facilitator.verify(payment, requirements)
        except PaymentError as exc:
            log.info("record %s not settled again: %s", record.id, exc)
            return record
        try:
            result = await self.facilitator.settle(payment, requirements)
        except SettlementInDoubt as exc:
            return await self._write(record, State.PENDING, tx=exc.transaction or record.tx, reason=exc.reason)
        except SettlementFailed as exc:
            # our attempt failed; the authorization may still move (another broadcast, the
            # payer): the record stays as it is until the chain or its expiry decides
            log.info("record %s: settling again failed (%s)", record.id, exc)
            return record
        return await self._write(
            record, State.SETTLED, tx=result.transaction, settled_at=now_ms(), charged=record.amount, reason=""
        )


@dataclass(slots=True)
class ReconcileReport:
    """What one reconcile pass did: records looked at, by the state they ended in."""

    examined: int = 0
    errors: int = 0
    skipped: bool = False
    ended: dict[str, int] | None = None

    def count(self, state: str) -> None:
        """Count a record that ended the pass in ``state``."""
        if self.ended is None:
            self.ended = {}
        self.ended[state] = self.ended.get(state, 0) + 1


class Reconciler:
    """Runs `Resolver` over every open record, one pass at a time across all instances.

    Args:
        resolver: the per-record rules.
        store: holds the lock that keeps passes from overlapping between instances.
        interval: seconds between background passes.
    """

    LOCK = keys.RECONCILER_LOCK

    def __init__(self, resolver: Resolver, store: Store, interval: float = 15.0) -> None:
        self.resolver = resolver
        self.store = store
        self.interval = interval
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def run_once(self, wait: float = 0.0) -> ReconcileReport:
        """One pass over the open records; skipped (``report.skipped``) when another pass,
        here or in another instance, still holds the lock after ``wait`` seconds."""
        report = ReconcileReport()
        token = secrets.token_hex(8)
        deadline = time.monotonic() + wait
        while not await self.store.claim(self.LOCK, token, LOCK_TTL_S):
            if time.monotonic() >= deadline:
                report.skipped = True
                return report
            await asyncio.sleep(0.05)
        try:
            for record in await self.resolver.journal.open_records():
                if record.scheme == BATCH_SCHEME:
                    continue  # the channel claimer's (see the module docstring)
                report.examined += 1
                try:
                    ended = await self.resolver.resolve(record)
                except (ChainError, StoreError) as exc:
                    report.errors += 1
                    log.warning("reconcile %s: %s", record.id, exc)
                    continue
                report.count(ended.state)
        finally:
            with contextlib.suppress(StoreError):
                await self.store.release(self.LOCK, token)
        return report

    def start(self) -> None:
        """Run passes in the background every ``interval`` seconds until `stop`."""
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                await self.run_once()
            except (ChainError, StoreError) as exc:  # an outage: the next pass tries again
                log.warning("reconcile pass skipped: %s", exc)
            except Exception:  # a bug: logged whole, and the loop goes on
                log.exception("reconcile pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)

    async def stop(self) -> None:
        """End the background loop (waits at most 5 s for a pass in progress)."""
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._task, 5)
