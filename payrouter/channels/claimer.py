"""The claimer: turns what channels were charged into money on chain, then sweeps it to pay_to.

One pass (`Claimer.run_once`, one at a time across instances under the store lock
``keys.CLAIMER_LOCK``):

1. Finish what an earlier pass left: claim and settle transactions whose outcome was unknown
   (journal records in ``pending``) are decided from their receipts; a refund the gate lost
   the answer to frees its channel once the chain spent its nonce; voucher records whose
   request died (``claimed``/``serving`` for longer than any channel reservation lives) are
   ``released``. Then every ``Claimed`` and ``Settled`` log paying ``pay_to`` since the last
   pass is journaled if it is not yet: a claimer killed between a mined transaction and its
   record, a claim inside a refund (the gate's claim + refund multicall), a settle called by
   someone else; so claim and settle records add up to the contract's receiver totals. So are
   our channels' deposits, refunds and finalised withdrawals the journal lacks (one landing
   after the gate gave up on its lost answer, one the payer made without us:
   `payrouter.channels.movements`).
2. Read every stored channel and its on-chain state (batched) and refresh the store's mirror,
   so the gate sees withdrawals and claims.
3. Claim, with ``claimWithSignature`` in batches of at most ``settler.max_claim_rows`` rows (``totalClaimed`` =
   ``charged``, on the latest stored voucher), every channel charged above its on-chain
   ``totalClaimed`` when the unclaimed sum reaches ``threshold`` or ``interval`` seconds
   passed since the last claim; channels with a pending withdrawal are claimed at once, since
   once its delay ends the payer can take what we have not claimed.
4. ``settle(pay_to, token)``: the contract pays what was claimed and not paid yet.

Money is counted from the chain only: a claim is journaled and recorded in the store from its
mined receipt's ``Claimed`` logs, a settle from its ``Settled`` log. A transaction in doubt is
journaled ``pending`` and decided next pass from its receipt, so a crash or a lost reply can
neither lose nor double a claim; the claim itself is idempotent on chain (rows at or below the
on-chain total are skipped).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from payrouter.chain import ChainClient, ChainError, Receipt
from payrouter.channels.contract import (
    CLAIMED_TOPIC,
    DROPPED_AFTER_MS,
    SETTLED_TOPIC,
    ChannelTxFailed,
    ChannelTxInDoubt,
    ChannelUnavailable,
    ClaimRow,
    OnchainChannel,
)
from payrouter.channels.movements import journal_movements
from payrouter.channels.records import (
    CLAIM_PATH,
    REFUND_PATH,
    SCHEME,
    SETTLE_PATH,
    claim_deltas,
    claim_record,
    is_voucher,
    settle_record,
    voucher_charged_before,
)
from payrouter.channels.settler import ChannelSettler
from payrouter.channels.state import ChannelState
from payrouter.channels.store import ChannelStore
from payrouter.journal import Journal, PaymentRecord, State, now_ms
from payrouter.store import Store, StoreError, keys
from wallets.channels import ChannelConfig
from wallets.errors import TypedDataError

__all__ = ["CLAIMED_TOPIC", "ClaimReport", "Claimer"]

log = logging.getLogger("payrouter.channels.claimer")

# A pass that crashed holding the lock blocks others at most this long (a pass waits up to
# 30 s per transaction receipt, so this leaves room for several batches).
LOCK_TTL_S = 300
# A voucher record still claimed/serving this long after its last update lost its worker:
# the channel reservation (at most 10 minutes) lapsed long ago.
STUCK_VOUCHER_MS = 15 * 60_000
# How long the claim clock survives in the store without a pass touching it.
_CLOCK_TTL_S = 30 * 86_400
# Store writes per gather while refreshing the mirror.
_UPSERT_CHUNK = 100
# The first pass ever (no scan cursor in the store) looks this many blocks back for logs.
FIRST_SCAN_BLOCKS = 10_000
_CURSOR_TTL_S = 365 * 86_400


def _held_by(record: PaymentRecord) -> str:
    """The reservation token a pending refund record names ("" when it names none)."""
    try:
        return str(json.loads(record.payment).get("reservation") or "")
    except (ValueError, AttributeError):
        return ""


def _is_hex(value: str) -> bool:
    """``0x`` and an even, non-zero number of hex digits (a stored signature we can send)."""
    try:
        return value.startswith("0x") and len(bytes.fromhex(value[2:])) > 0
    except ValueError:
        return False


def _topic_address(address: str) -> str:
    return "0x" + "0" * 24 + address[2:].lower()


@dataclass(slots=True)
class ClaimReport:
    """What one pass did (amounts in atomic units of the token).

    Attributes:
        skipped: another pass held the lock; nothing was done.
        channels: channels of ``pay_to``/``token`` read from the store and the chain.
        unclaimed: their ``charged`` above on-chain ``totalClaimed`` before this pass claimed.
        trigger: why it claimed: ``withdrawal``, ``threshold``, ``interval``, or ``""`` (it did not).
        claimed: deltas mined (this pass's claims and earlier ones in doubt that resolved).
        claim_txs: claim transactions mined.
        settled, settle_tx: what the settle paid to ``pay_to`` and its transaction.
        withdrawing: channels with a pending withdrawal.
        in_doubt: transactions sent whose outcome is not known yet (journaled ``pending``),
            and the ids of refund records the gate journaled pending (their channel held).
        released: voucher records released because their request died.
        journaled: deposits, refunds and finalised withdrawals of our channels found on chain
            that the journal lacked, now journaled (`payrouter.channels.movements`).
        errors: what failed (decided again next pass); never holds a key or a signature.
    """

    skipped: bool = False
    channels: int = 0
    unclaimed: int = 0
    trigger: str = ""
    claimed: int = 0
    claim_txs: list[str] = field(default_factory=list)
    settled: int = 0
    settle_tx: str = ""
    withdrawing: list[str] = field(default_factory=list)
    in_doubt: list[str] = field(default_factory=list)
    released: int = 0
    journaled: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Candidate:
    """A channel with something to claim."""

    channel_id: str
    config: ChannelConfig
    state: ChannelState
    onchain: OnchainChannel
    target: int  # the totalClaimed to claim up to

    @property
    def delta(self) -> int:
        return self.target - self.onchain.total_claimed

    def row(self) -> ClaimRow:
        return ClaimRow(self.config, self.state.signed_max, bytes.fromhex(self.state.signature[2:]), self.target)


class _Stop(Exception):
    """A transaction is in doubt: send nothing more this pass (the chain or node is unwell)."""


class Claimer:
    """Claims charged channel money and settles it to ``pay_to``, in passes (module docstring).

    Args:
        store: the channels' state (shared with the gate).
        settler: sends the claims and settles (our gas wallet, or a facilitator); channels
            whose ``receiverAuthorizer`` is not its ``receiver_authorizer`` are left alone.
        journal: where claim and settle records go (and voucher records are read from).
        lock_store: holds ``keys.CLAIMER_LOCK`` and the claim clock ``keys.CLAIMER_LAST_CLAIM``.
        pay_to: the receiver of the channels claimed (others are left alone).
        token: the channels' token (the price table's asset).
        interval: seconds unclaimed money may wait before a pass claims it whatever its sum.
        threshold: atomic units: a pass claims as soon as the unclaimed sum reaches it.
        chain: reads receipts (the ``Claimed``/``Settled`` logs are what gets counted).
        network: the records' network (``eip155:<chain id>``).
        poll: seconds between background passes (`start`); keep it well below the smallest
            ``withdrawDelay`` (900 s), since a withdrawal is only noticed by a pass.
        lock_ttl: seconds the pass lock outlives its last refresh (before each transaction),
            so a pass that crashed blocks the others at most this long.
    """

    LOCK = keys.CLAIMER_LOCK

    def __init__(
        self,
        store: ChannelStore,
        settler: ChannelSettler,
        journal: Journal,
        lock_store: Store,
        pay_to: str,
        token: str,
        interval: float,
        threshold: int,
        *,
        chain: ChainClient,
        network: str,
        poll: float = 30.0,
        lock_ttl: int = LOCK_TTL_S,
    ) -> None:
        if type(threshold) is not int or threshold < 0:
            raise ValueError("threshold must be a non-negative int of atomic units")
        self.store = store
        self.settler = settler
        self.contract = settler.contract
        self.authorizer = settler.receiver_authorizer
        self.journal = journal
        self.lock_store = lock_store
        self.pay_to = pay_to
        self.token = token
        self.interval = interval
        self.threshold = threshold
        self.chain = chain
        self.network = network
        self.poll = poll
        self.lock_ttl = lock_ttl
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"Claimer(pay_to={self.pay_to}, token={self.token}, authorizer={self.authorizer})"

    # ------------------------------------------------------------------ passes

    async def run_once(self, wait: float = 0.0) -> ClaimReport:
        """One pass; ``report.skipped`` when another pass (here or in another instance) still
        holds the lock after ``wait`` seconds.

        Chain and store outages end the pass early and land in ``report.errors``; whatever was
        not done is done by the next pass.
        """
        report = ClaimReport()
        owner = secrets.token_hex(8)
        deadline = time.monotonic() + wait
        while not await self.lock_store.claim(self.LOCK, owner, self.lock_ttl):
            if time.monotonic() >= deadline:
                report.skipped = True
                return report
            await asyncio.sleep(0.05)
        ours: list[tuple[ChannelState, ChannelConfig]] | None = None
        try:
            try:
                held = await self._finish_open(report)
                ours = await self._our_channels(report)
                await self._catch_up(report)
                await self._claim_due(report, held, owner, ours)
                await self._settle(report)
            except _Stop:
                pass
            except (ChainError, StoreError) as exc:
                report.errors.append(f"pass ended early: {exc}")
                log.warning("claimer pass ended early: %s", exc)
            if ours is not None:
                # last, and apart: a node refusing these queries must not hold up a claim
                try:
                    await self._journal_movements(report, ours)
                except (ChainError, StoreError) as exc:
                    report.errors.append(f"channel movements not journaled: {exc}")
                    log.warning("claimer: channel movements not journaled: %s", exc)
        finally:
            with contextlib.suppress(StoreError):
                await self.lock_store.release(self.LOCK, owner)
        return report

    def start(self) -> None:
        """Run passes in the background every ``poll`` seconds until `stop`."""
        self._stop.clear()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                report = await self.run_once()
                if report.claim_txs or report.settle_tx or report.errors:
                    log.info(
                        "claimer: claimed %d in %d tx, settled %d, %d errors",
                        report.claimed,
                        len(report.claim_txs),
                        report.settled,
                        len(report.errors),
                    )
            except Exception:  # a bug: logged whole, and the loop goes on
                log.exception("claimer pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.poll)

    async def stop(self) -> None:
        """End the background loop (waits at most 5 s for a pass in progress, then cancels it:
        a pass cut short loses nothing, the next one decides what it left in doubt)."""
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._task, 5)
            self._task = None

    # ------------------------------------------------ what earlier passes left

    async def _finish_open(self, report: ClaimReport) -> set[str]:
        """Decide what earlier passes left; return the channels of claims still in doubt (not
        claimed again meanwhile: the transaction in the mempool may still claim them)."""
        now = now_ms()
        held: set[str] = set()
        for record in await self.journal.open_records():
            if record.scheme != SCHEME:
                continue
            if record.state == State.PENDING and record.path in (CLAIM_PATH, SETTLE_PATH):
                if not await self._decide(record, report) and record.path == CLAIM_PATH:
                    with contextlib.suppress(ValueError):
                        held |= claim_deltas(record).keys()
            elif record.state == State.PENDING and record.path == REFUND_PATH:
                # its channel is not claimed meanwhile: the refund's own multicall claims it
                if await self._decide_refund(record, report):
                    held.add(record.nonce)
            elif is_voucher(record) and record.state in (State.CLAIMED, State.SERVING):
                if now - record.updated_at > STUCK_VOUCHER_MS:
                    await self._release_stuck(record, report)
        return held

    async def _decide_refund(self, record: PaymentRecord, report: ClaimReport) -> bool:
        """A refund the gate sent and lost the answer to holds its channel. Its signature has no
        deadline: anyone may still send it while its nonce is unspent, so the hold is kept
        (extended) until the chain spends that nonce. Then the channel's mirror is refreshed,
        the channel freed, and the record released: the movement scan writes the refund from
        its log over it (a refund capped to nothing logs nothing, and stays released). True
        while the refund is still in doubt."""
        channel_id = record.nonce
        try:
            nonce = int(record.id.rsplit(":", 1)[1])
            raw = bytes.fromhex(channel_id[2:])
        except (ValueError, IndexError):
            report.errors.append(f"refund record {record.id} is unreadable")
            return False
        onchain = (await self.contract.channels([raw]))[raw]
        if onchain.refund_nonce > nonce:
            await self._free_hold(record, onchain)
            released = record.moved(State.RELEASED, amount=0, reason="decided on chain")
            await self.journal.advance(released, [State.PENDING])
            log.info("claimer: refund %s decided on chain; channel %s freed", record.id, channel_id)
            return False
        token = _held_by(record)
        if not token or not await self.store.extend(channel_id, token, DROPPED_AFTER_MS):
            report.errors.append(f"refund {record.id} is in doubt and its channel is no longer held")
        report.in_doubt.append(record.id)
        return True

    async def _free_hold(self, record: PaymentRecord, onchain: OnchainChannel | None = None) -> None:
        """Free the channel a pending refund ``record`` held, its mirror refreshed from the
        chain first (read now unless given): the refund lowered the balance vouchers are
        checked against."""
        channel_id = record.nonce
        read_at = now_ms()
        if onchain is None:
            raw = bytes.fromhex(channel_id[2:])
            onchain = (await self.contract.channels([raw]))[raw]
        state = await self.store.get(channel_id)
        if state is not None:
            await self._mirror(state, onchain, read_at)
        await self.store.release(channel_id, _held_by(record))

    async def _decide(self, record: PaymentRecord, report: ClaimReport) -> bool:
        """A claim or settle sent in doubt: count it from its receipt, or give it up. False
        while it is still in doubt."""
        receipt = await self.chain.receipt(record.tx)
        if receipt is None:
            if now_ms() - record.created_at < DROPPED_AFTER_MS:
                report.in_doubt.append(record.tx)
                return False
            if await self.chain.call("eth_getTransactionByHash", [record.tx]) is not None:
                report.in_doubt.append(record.tx)
                return False
            await self._give_up(record, "dropped")
        elif receipt.status != 1:
            await self._give_up(record, "reverted")
        elif record.path == CLAIM_PATH:
            await self._count_claim(receipt, report)
        else:
            await self._count_settle(receipt, report)
        return True

    async def _give_up(self, record: PaymentRecord, reason: str) -> None:
        # nothing moved: the record stays as the trace of a transaction that did nothing
        await self.journal.advance(record.moved(State.RELEASED, amount=0, reason=reason), [State.PENDING])
        log.warning("claimer: %s transaction %s %s; nothing moved", record.path, record.tx, reason)

    async def _release_stuck(self, record: PaymentRecord, report: ClaimReport) -> None:
        """Release a voucher record whose request died, unless its charge reached the channel.

        The record's id names the channel's ``charged`` when the request began; a later request
        on the channel could only start from that same ``charged`` (and so the same id) unless
        this one committed. So a channel still at (or below) that ``charged`` was not charged
        for it; a channel above it was, and the record is left for a human (the audit shows it).
        """
        before = voucher_charged_before(record)
        try:
            state = await self.store.get(record.nonce)
        except ValueError:  # not a channel id: nothing can have been charged under it
            state = None
        if before is not None and state is not None and state.charged > before:
            report.errors.append(f"voucher record {record.id} is {record.state} but its channel was charged past it")
            return
        released = record.moved(State.RELEASED, reason="worker_lost")
        written, _ = await self.journal.advance(released, [record.state], drop_answer=True)
        if written:
            report.released += 1
            log.info("claimer: released %s (its request died; nothing was charged)", record.id)

    async def _catch_up(self, report: ClaimReport) -> None:
        """Journal every claim and settle paying ``pay_to`` mined since the last scan that the
        journal does not have as settled (each from its receipt, like our own)."""
        head = int(await self.chain.call("eth_blockNumber", []), 16)
        raw = await self.lock_store.get(keys.CLAIMER_SCANNED)
        start = int(raw) + 1 if raw else max(head - FIRST_SCAN_BLOCKS, 0)
        if start > head:
            return
        pay_to, token = _topic_address(self.pay_to), _topic_address(self.token)
        kinds: list[tuple[str, list[str | None]]] = [
            (CLAIM_PATH, [CLAIMED_TOPIC, None, pay_to]),
            (SETTLE_PATH, [SETTLED_TOPIC, pay_to, token]),
        ]
        for path, topics in kinds:
            txs = dict.fromkeys(
                str(e["transactionHash"]).lower()
                for e in await self.chain.logs_between(self.contract.address, topics, start, head)
            )
            for tx in txs:
                known = await self.journal.get(f"batch-{path}:{tx}")
                if known is not None and known.state == State.SETTLED:
                    continue
                receipt = await self.chain.receipt(tx)
                if receipt is None or receipt.status != 1:
                    continue  # a log of a block reorganised away: the next scan of a new head sees the truth
                log.info("claimer: journaling %s %s found on chain", path, tx)
                if path == CLAIM_PATH:
                    await self._count_claim(receipt, report)
                else:
                    await self._count_settle(receipt, report)
        await self.lock_store.put(keys.CLAIMER_SCANNED, str(head).encode(), _CURSOR_TTL_S)

    async def _journal_movements(self, report: ClaimReport, ours: list[tuple[ChannelState, ChannelConfig]]) -> None:
        """Journal the deposits, refunds and finalised withdrawals of ``ours`` the journal
        lacks: since the last scan for channels that scan covered, over the last
        ``FIRST_SCAN_BLOCKS`` for channels it did not (new in the store since, or added while
        it ran). Its own cursor: the block scanned to, and the channels it covered."""
        head = int(await self.chain.call("eth_blockNumber", []), 16)
        raw = await self.lock_store.get(keys.CLAIMER_MOVEMENTS)
        try:
            cursor = json.loads(raw) if raw else {}
            scanned, covered = int(cursor["block"]), set(cursor["channels"])
        except (ValueError, KeyError, TypeError):
            scanned, covered = -1, set()
        ids = {state.channel_id for state, _ in ours}
        window = max(head - FIRST_SCAN_BLOCKS, 0)
        # channels new to the scan start at its window, or where it left off if that is older
        fresh = window if scanned < 0 else min(scanned + 1, window)
        for channels, start in ((ids & covered, scanned + 1), (ids - covered, fresh)):
            if not channels or start > head:
                continue
            found = await journal_movements(
                self.chain, self.contract.address, self.journal, channels, start, head, self._where(), self._free_hold
            )
            for record in found:
                log.info("claimer: journaled %s %s found on chain (%d)", record.path, record.id, record.amount)
            report.journaled += len(found)
        state = json.dumps({"block": head, "channels": sorted(ids)}, separators=(",", ":"))
        await self.lock_store.put(keys.CLAIMER_MOVEMENTS, state.encode(), _CURSOR_TTL_S)

    # ------------------------------------------------------------------ claims

    async def _claim_due(
        self, report: ClaimReport, held: set[str], owner: str, ours: list[tuple[ChannelState, ChannelConfig]]
    ) -> None:
        found = await self._candidates(report, ours)
        report.unclaimed = sum(c.delta for c in found)
        candidates = [c for c in found if c.channel_id not in held]
        unclaimed = sum(c.delta for c in candidates)
        withdrawing = [c for c in candidates if c.onchain.withdraw_initiated_at]
        if unclaimed >= self.threshold and unclaimed > 0:
            report.trigger, chosen = "threshold", candidates
        elif await self._interval_due(bool(candidates)):
            report.trigger, chosen = "interval", candidates
        elif withdrawing:
            report.trigger, chosen = "withdrawal", withdrawing
        else:
            return
        # withdrawals first: their claims are the ones with a deadline
        chosen = sorted(chosen, key=lambda c: c.onchain.withdraw_initiated_at == 0)
        rows = self.settler.max_claim_rows
        for start in range(0, len(chosen), rows):
            await self._claim_batch(chosen[start : start + rows], report, owner)
        if report.claim_txs:
            await self.lock_store.put(keys.CLAIMER_LAST_CLAIM, str(now_ms()).encode(), _CLOCK_TTL_S)

    async def _interval_due(self, waiting: bool) -> bool:
        """True when unclaimed money has waited ``interval`` seconds.

        The clock (``keys.CLAIMER_LAST_CLAIM``) is the last claim, or the last pass that found
        nothing waiting: money that arrives after a quiet spell still waits the interval.
        """
        now = now_ms()
        raw = await self.lock_store.get(keys.CLAIMER_LAST_CLAIM)
        if raw is None or not waiting:
            await self.lock_store.put(keys.CLAIMER_LAST_CLAIM, str(now).encode(), _CLOCK_TTL_S)
            return waiting and self.interval <= 0
        return now - int(raw) >= self.interval * 1000

    async def _our_channels(self, report: ClaimReport) -> list[tuple[ChannelState, ChannelConfig]]:
        """Every stored channel paying ``pay_to`` in ``token``, with its config."""
        states = await self.store.get_many(await self.store.ids())
        ours: list[tuple[ChannelState, ChannelConfig]] = []
        for state in states.values():
            try:
                config = ChannelConfig.from_wire(json.loads(state.config))
            except (ValueError, TypedDataError) as exc:
                report.errors.append(f"channel {state.channel_id}: unreadable config ({exc})")
                continue
            if config.receiver.lower() == self.pay_to.lower() and config.token.lower() == self.token.lower():
                ours.append((state, config))
        report.channels = len(ours)
        return ours

    async def _candidates(
        self, report: ClaimReport, ours: list[tuple[ChannelState, ChannelConfig]]
    ) -> list[_Candidate]:
        """Every channel of ``ours`` with a claimable charge, after refreshing the store's mirror."""
        if not ours:
            return []
        # stamped before the read: the mirror never claims to be fresher than the chain it saw
        read_at = now_ms()
        onchain = await self.contract.channels([bytes.fromhex(s.channel_id[2:]) for s, _ in ours])
        candidates: list[_Candidate] = []
        for start in range(0, len(ours), _UPSERT_CHUNK):
            chunk = ours[start : start + _UPSERT_CHUNK]
            fresh = await asyncio.gather(
                *(self._mirror(s, onchain[bytes.fromhex(s.channel_id[2:])], read_at) for s, _ in chunk)
            )
            for (_, config), state in zip(chunk, fresh, strict=True):
                candidate = self._candidate(state, config, onchain[bytes.fromhex(state.channel_id[2:])], report)
                if candidate is not None:
                    candidates.append(candidate)
        return candidates

    async def _mirror(self, state: ChannelState, chain: OnchainChannel, read_at: int) -> ChannelState:
        return await self.store.upsert_onchain(
            state.channel_id,
            config=state.config,
            payer=state.payer,
            balance=chain.balance,
            total_claimed=chain.total_claimed,
            withdraw_requested_at=chain.withdraw_initiated_at,
            refund_nonce=chain.refund_nonce,
            synced_at_ms=read_at,
        )

    def _candidate(
        self, state: ChannelState, config: ChannelConfig, chain: OnchainChannel, report: ClaimReport
    ) -> _Candidate | None:
        if chain.withdraw_initiated_at:
            report.withdrawing.append(state.channel_id)
        # a claim above the balance reverts the whole batch: claim what is left, and say so
        target = min(state.charged, chain.balance)
        if target <= chain.total_claimed:
            return None
        if target < state.charged:  # the payer withdrew before we claimed: the rest is lost
            report.errors.append(
                f"channel {state.channel_id}: charged {state.charged} but only {chain.balance} is deposited"
            )
        if not _is_hex(state.signature) or state.signed_max < target:
            report.errors.append(f"channel {state.channel_id}: charged {target} without a voucher covering it")
            return None
        if config.receiver_authorizer != self.authorizer:
            report.errors.append(f"channel {state.channel_id}: its receiverAuthorizer is not our authorizer")
            return None
        return _Candidate(state.channel_id, config, state, chain, target)

    async def _claim_batch(self, batch: Sequence[_Candidate], report: ClaimReport, owner: str) -> None:
        """Claim ``batch`` in one transaction; a batch refused in simulation is split in halves
        until the rows at fault stand alone, so one bad channel holds up no other."""
        # every transaction may wait long for its receipt (a split batch sends many): keep the
        # lock before each, or stop if it lapsed (another pass may have started; our rows would
        # only be sent twice)
        if not await self.lock_store.replace(self.LOCK, owner, owner, self.lock_ttl):
            report.errors.append("the claimer lock lapsed during the pass; the rest is left to the next")
            raise _Stop
        try:
            tx = await self.settler.claim([c.row() for c in batch])
        except ChannelUnavailable as exc:
            report.errors.append(f"claim not sent: {exc}")
            log.warning("claimer: claim not sent (%s); the next pass tries again", exc)
            raise _Stop from None
        except ChannelTxFailed as exc:
            # a refusal in simulation, or a batch mined and reverted (e.g. out of gas at a
            # facilitator's fixed gas limit): halves until the rows at fault stand alone
            if len(batch) > 1:
                half = len(batch) // 2
                await self._claim_batch(batch[:half], report, owner)
                await self._claim_batch(batch[half:], report, owner)
                return
            where = batch[0].channel_id if len(batch) == 1 else f"{len(batch)} channels"
            report.errors.append(f"claim of {where} failed: {exc}")
            log.warning("claimer: claim of %s failed: %s", where, exc)
            return
        except ChannelTxInDoubt as exc:
            if exc.tx:
                asked = {c.channel_id: (c.target, c.delta) for c in batch}
                record = claim_record(exc.tx, asked, **self._where(), state=State.PENDING)
                await self.journal.advance(record, [State.PENDING])
                report.in_doubt.append(exc.tx)
            else:
                report.errors.append(
                    f"claim of {len(batch)} channels in doubt without a transaction hash ({exc.reason}); "
                    "a later pass finds it in the chain's logs if it was mined"
                )
            log.warning("claimer: claim %s in doubt (%s); decided next pass", exc.tx or "(no hash)", exc.reason)
            raise _Stop from None
        except ValueError as exc:  # a row the contract object refuses to encode: a bug, not an outage
            report.errors.append(f"claim of {len(batch)} channels not sent: {exc}")
            log.error("claimer: claim of %d channels not sent: %s", len(batch), exc)
            return
        receipt = await self.chain.receipt(tx)
        if receipt is None:  # mined a moment ago, yet the node lost it: decide it next pass
            asked = {c.channel_id: (c.target, c.delta) for c in batch}
            await self.journal.advance(claim_record(tx, asked, **self._where(), state=State.PENDING), [State.PENDING])
            report.in_doubt.append(tx)
            return
        await self._count_claim(receipt, report)

    async def _count_claim(self, receipt: Receipt, report: ClaimReport) -> None:
        """Journal and record the claim ``receipt`` mined, from its ``Claimed`` logs."""
        # only claims paying our receiver: a transaction someone else sent may hold theirs too
        deltas = self.contract.claimed_in(receipt, self.pay_to)
        tx = receipt.transaction_hash
        # the store first: a journal write lost now is redone from the receipt (the record
        # stays pending), while the store's mirror only ever rises
        for channel_id, (total, _) in deltas.items():
            await self.store.record_claimed(channel_id, total)
        await self.journal.advance(claim_record(tx, deltas, **self._where(), state=State.SETTLED), [State.PENDING])
        report.claim_txs.append(tx)
        report.claimed += sum(d for _, d in deltas.values())

    # ------------------------------------------------------------------ settle

    async def _settle(self, report: ClaimReport) -> None:
        try:
            tx, amount = await self.settler.settle(self.pay_to, self.token)
        except ChannelTxFailed as exc:
            report.errors.append(f"settle failed: {exc}")
            log.warning("claimer: settle failed: %s", exc)
            return
        except ChannelTxInDoubt as exc:
            if exc.tx:
                record = settle_record(exc.tx, 0, **self._where(), state=State.PENDING)
                await self.journal.advance(record, [State.PENDING])
                report.in_doubt.append(exc.tx)
            log.warning("claimer: settle %s in doubt (%s); decided next pass", exc.tx or "(no hash)", exc.reason)
            return
        if tx and amount:
            await self.journal.advance(settle_record(tx, amount, **self._where(), state=State.SETTLED), [State.PENDING])
            report.settle_tx, report.settled = tx, amount

    async def _count_settle(self, receipt: Receipt, report: ClaimReport) -> None:
        amount = 0
        for entry in self._logs(receipt, SETTLED_TOPIC):
            topics = [str(t).lower() for t in entry["topics"]]
            if topics[1:3] == [_topic_address(self.pay_to), _topic_address(self.token)]:
                amount += int(str(entry.get("data", "0x0")), 16)
        tx = receipt.transaction_hash
        await self.journal.advance(settle_record(tx, amount, **self._where(), state=State.SETTLED), [State.PENDING])
        report.settled += amount
        report.settle_tx = report.settle_tx or tx

    # ---------------------------------------------------------------- helpers

    def _where(self) -> dict[str, str]:
        return {"network": self.network, "asset": self.token, "pay_to": self.pay_to}

    def _logs(self, receipt: Receipt, topic: str) -> list[dict[str, Any]]:
        return [
            entry
            for entry in receipt.logs
            if str(entry.get("address", "")).lower() == self.contract.address.lower()
            and [str(t).lower() for t in entry.get("topics") or []][:1] == [topic]
        ]
