"""The audit of ``batch-settlement`` channel money: journal, channel store and chain, side by side.

Money on a channel is counted three times, and the counts must agree:

- per channel, the ``charged`` of its settled voucher records (the journal) against the
  store's cumulative ``charged`` (``journal_vs_store``); a channel the store no longer has
  (deleted after a full refund) against its on-chain ``totalClaimed`` (``journal_vs_chain``);
- per channel, its settled deposit records minus its refund and withdrawal records (the
  journal) against its on-chain ``balance`` (``balance_vs_chain``), which is exactly what was
  ever deposited minus what went back to the payer;
- per channel, the store's ``charged`` against the on-chain ``totalClaimed``: the difference
  is unclaimed money (reported, not a fault); a claim above the charge is (``claimed_above_charged``),
  and so is a charge above the channel's on-chain balance (``charged_above_balance``: the payer
  withdrew what we had not claimed yet, so it can never be);
- for ``pay_to`` and the token, the settled claim records' sum against the contract's
  ``receivers.totalClaimed`` (``claims_vs_chain``), and the settle records' sum against its
  ``totalSettled`` (``settles_vs_chain``).

Claim and settle records still ``pending`` (sent, not decided yet) are named in the notes: the
claimer's next pass settles them, after which the sums agree again.
"""

from __future__ import annotations

import contextlib
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from payrouter.chain import ChainError
from payrouter.channels.contract import BatchSettlementContract
from payrouter.channels.records import CLAIM_PATH, MOVEMENT_SIGN, SCHEME, SETTLE_PATH, is_voucher
from payrouter.channels.state import channel_key_id
from payrouter.channels.store import ChannelStore
from payrouter.journal import Journal, PaymentRecord, State
from payrouter.ledger.records import fetch_records

__all__ = ["ChannelAuditReport", "ChannelDifference", "ChannelRow", "audit_channels", "compare_channels"]

ChannelKind = Literal[
    "journal_vs_store",
    "journal_vs_chain",
    "balance_vs_chain",
    "claimed_above_charged",
    "charged_above_balance",
    "claims_vs_chain",
    "settles_vs_chain",
]


@dataclass(frozen=True, slots=True)
class ChannelRow:
    """One channel's three counts (atomic units).

    Attributes:
        channel_id: lower-case 0x hex.
        journal_charged: the sum of ``charged`` of its settled voucher records.
        store_charged: the store's cumulative ``charged`` (None: the store has no such channel).
        claimed: the contract's ``totalClaimed``; ``balance``: its ``balance``.
        open_vouchers: its voucher records still ``claimed``/``serving`` (requests in flight).
        journal_balance: its settled deposit records minus its refund and withdrawal records.
    """

    channel_id: str
    journal_charged: int
    store_charged: int | None
    claimed: int
    balance: int
    open_vouchers: int = 0
    journal_balance: int = 0

    @property
    def unclaimed(self) -> int:
        """Charged and not claimed on chain yet (the store's count, else the journal's)."""
        charged = self.journal_charged if self.store_charged is None else self.store_charged
        return charged - self.claimed

    def to_json(self) -> dict[str, Any]:
        """A JSON object (amounts as integer strings)."""
        return {
            "channel": self.channel_id,
            "journal_charged": str(self.journal_charged),
            "store_charged": None if self.store_charged is None else str(self.store_charged),
            "claimed": str(self.claimed),
            "balance": str(self.balance),
            "journal_balance": str(self.journal_balance),
            "unclaimed": str(self.unclaimed),
            "open_vouchers": self.open_vouchers,
        }


@dataclass(frozen=True, slots=True)
class ChannelDifference:
    """Two counts of channel money that should agree and do not.

    Attributes:
        kind: which comparison (module docstring).
        channel: the channel id ("" for the receiver's totals).
        expected: the first count named by ``kind`` (the journal's, or the store's for
            ``claimed_above_charged``).
        actual: the second one (the store's or the chain's).
        note: what may explain it, for a human.
    """

    kind: ChannelKind
    channel: str
    expected: int
    actual: int
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        """A JSON object (amounts as integer strings)."""
        return {
            "kind": self.kind,
            "channel": self.channel,
            "expected": str(self.expected),
            "actual": str(self.actual),
            "note": self.note,
        }


@dataclass(slots=True)
class ChannelAuditReport:
    """Every channel's counts, the receiver's totals, and the differences.

    Attributes:
        channels: one row per channel (store ids and voucher records' channels), by id.
        claims_journal, claimed_chain: settled claim records' sum; the contract's receiver ``totalClaimed``.
        settles_journal, settled_chain: settled settle records' sum; the contract's ``totalSettled``.
        pending: claim, settle and refund records still in doubt (their transaction hashes,
            or a refund's record id when its hash is unknown).
    """

    channels: list[ChannelRow] = field(default_factory=list)
    claims_journal: int = 0
    claimed_chain: int = 0
    settles_journal: int = 0
    settled_chain: int = 0
    pending: list[str] = field(default_factory=list)
    differences: list[ChannelDifference] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        """True when every count agrees."""
        return not self.differences

    @property
    def charged(self) -> int:
        """Everything the journal says channels were charged."""
        return sum(r.journal_charged for r in self.channels)

    @property
    def unclaimed(self) -> int:
        """Everything charged and not claimed on chain yet."""
        return sum(max(r.unclaimed, 0) for r in self.channels)

    def to_json(self) -> dict[str, Any]:
        """A JSON object (amounts as integer strings)."""
        return {
            "charged": str(self.charged),
            "unclaimed": str(self.unclaimed),
            "claims": {"journal": str(self.claims_journal), "chain": str(self.claimed_chain)},
            "settles": {"journal": str(self.settles_journal), "chain": str(self.settled_chain)},
            "pending": self.pending,
            "equal": self.equal,
            "channels": [r.to_json() for r in self.channels],
            "differences": [d.to_json() for d in self.differences],
        }


def _ours(record: PaymentRecord, asset: str, pay_to: str) -> bool:
    return record.scheme == SCHEME and record.asset.lower() == asset.lower() and record.pay_to.lower() == pay_to.lower()


def _pays(config: str, asset: str, pay_to: str) -> bool:
    """True when the stored channel ``config`` pays ``pay_to`` in ``asset`` (an unreadable one
    is audited too: better a row too many than money unseen)."""
    try:
        wire = json.loads(config)
        return str(wire["receiver"]).lower() == pay_to.lower() and str(wire["token"]).lower() == asset.lower()
    except (ValueError, KeyError, TypeError):
        return True


def compare_channels(report: ChannelAuditReport) -> list[ChannelDifference]:
    """The differences of an already filled ``report`` (pure: no I/O), channels by id, then
    the receiver's totals."""
    out: list[ChannelDifference] = []
    for row in report.channels:
        if row.journal_balance != row.balance:
            out.append(
                ChannelDifference(
                    "balance_vs_chain",
                    row.channel_id,
                    row.journal_balance,
                    row.balance,
                    "a deposit, refund or withdrawal not journaled (the claimer journals those it finds on "
                    "chain since its scan began)",
                )
            )
        if row.store_charged is None:
            if row.journal_charged != row.claimed:
                out.append(
                    ChannelDifference(
                        "journal_vs_chain",
                        row.channel_id,
                        row.journal_charged,
                        row.claimed,
                        "the store no longer has the channel: what was charged should all be claimed",
                    )
                )
            continue
        if row.journal_charged != row.store_charged:
            note = (
                "requests in flight on it" if row.open_vouchers else "a voucher record lost, or a charge not journaled"
            )
            out.append(
                ChannelDifference("journal_vs_store", row.channel_id, row.journal_charged, row.store_charged, note)
            )
        if row.store_charged > row.balance:
            out.append(
                ChannelDifference(
                    "charged_above_balance",
                    row.channel_id,
                    row.store_charged,
                    row.balance,
                    "charged beyond what the channel holds: the payer took it back before it was claimed",
                )
            )
        if row.store_charged < row.claimed:
            out.append(
                ChannelDifference(
                    "claimed_above_charged",
                    row.channel_id,
                    row.store_charged,
                    row.claimed,
                    "claimed on chain beyond what the store says was charged",
                )
            )
    doubt = f"{len(report.pending)} transactions still in doubt" if report.pending else ""
    if report.claims_journal != report.claimed_chain:
        note = doubt or "a claim not journaled (or the store the journal lived in lost it)"
        out.append(ChannelDifference("claims_vs_chain", "", report.claims_journal, report.claimed_chain, note))
    if report.settles_journal != report.settled_chain:
        note = doubt or "a settle not journaled (anyone may call settle for pay_to)"
        out.append(ChannelDifference("settles_vs_chain", "", report.settles_journal, report.settled_chain, note))
    return out


async def audit_channels(
    journal: Journal,
    store: ChannelStore,
    contract: BatchSettlementContract,
    asset: str,
    pay_to: str,
) -> ChannelAuditReport:
    """Audit channel money (module docstring): the batch-settlement records of ``asset`` and
    ``pay_to`` in ``journal``, the channels in ``store``, and the chain.

    The receiver's totals are read before the journal (a claim mined meanwhile shows at worst
    as ``claims_vs_chain`` until the next audit). Without any channel or channel record
    nothing else is read from the chain, which may not even have the contract.

    Raises:
        ChainError: the node could not be read.
        StoreError: the journal or the store could not be read.
    """
    totals: tuple[int, int] | ChainError
    try:
        totals = await contract.receiver_totals(pay_to, asset)
    except ChainError as exc:  # raised below, unless there is nothing to audit
        totals = exc
    report = _count_records(await fetch_records(journal), asset, pay_to)
    journaled = report.charged_by_channel.keys() | report.open_by_channel.keys() | report.moved_by_channel.keys()
    stored = await store.get_many(set(await store.ids()) | journaled)
    ids = sorted(
        cid for cid in stored.keys() | journaled if cid in journaled or _pays(stored[cid].config, asset, pay_to)
    )
    if not ids and not report.seen:
        return ChannelAuditReport()  # no channel money anywhere
    if isinstance(totals, ChainError):
        raise totals
    out = ChannelAuditReport(claims_journal=report.claims, settles_journal=report.settles, pending=report.pending)
    out.claimed_chain, out.settled_chain = totals
    onchain = await contract.channels([bytes.fromhex(i[2:]) for i in ids]) if ids else {}
    for cid in ids:
        chain = onchain[bytes.fromhex(cid[2:])]
        state = stored.get(cid)
        out.channels.append(
            ChannelRow(
                channel_id=cid,
                journal_charged=report.charged_by_channel.get(cid, 0),
                store_charged=None if state is None else state.charged,
                claimed=chain.total_claimed,
                balance=chain.balance,
                open_vouchers=report.open_by_channel.get(cid, 0),
                journal_balance=report.moved_by_channel.get(cid, 0),
            )
        )
    out.differences = compare_channels(out)
    return out


@dataclass(slots=True)
class _Counted:
    """The journal's side of the channel audit."""

    seen: bool = False
    charged_by_channel: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    open_by_channel: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    moved_by_channel: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    claims: int = 0
    settles: int = 0
    pending: list[str] = field(default_factory=list)


def _count_records(records: Iterable[PaymentRecord], asset: str, pay_to: str) -> _Counted:
    counted = _Counted()
    for record in records:
        if not _ours(record, asset, pay_to):
            continue
        counted.seen = True
        if is_voucher(record):
            try:
                channel = channel_key_id(record.nonce)
            except ValueError:
                continue
            if record.state == State.SETTLED:
                counted.charged_by_channel[channel] += record.charged
            elif record.state in (State.CLAIMED, State.SERVING):
                counted.open_by_channel[channel] += 1
        elif record.path in MOVEMENT_SIGN:
            if record.state == State.SETTLED:
                with contextlib.suppress(ValueError):
                    channel = channel_key_id(record.nonce)
                    counted.moved_by_channel[channel] += MOVEMENT_SIGN[record.path] * record.amount
            elif record.state == State.PENDING:  # a refund whose answer was lost
                counted.pending.append(record.tx or record.id)
        elif record.path in (CLAIM_PATH, SETTLE_PATH):
            if record.state == State.SETTLED and record.path == CLAIM_PATH:
                counted.claims += record.amount
            elif record.state == State.SETTLED:
                counted.settles += record.amount
            elif record.state == State.PENDING:
                counted.pending.append(record.tx)
    return counted
