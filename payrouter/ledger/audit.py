"""The journal's settled records against the chain's token transfers to ``pay_to``.

Each settled ``exact`` record stands for exactly one ERC-20 ``Transfer`` log: from its payer
to ``pay_to`` in its transaction, of its ``charged`` amount. One transaction may carry several
such transfers (a batch), so they are paired within a transaction by payer and amount. What
pairs up is matched; the rest is a `Difference`:

- ``not_in_journal``: money arrived that no settled record accounts for (a record still
  pending or settling, a record the store lost, or a plain transfer from someone);
- ``not_on_chain``: a settled record whose transfer is not there (no such transaction, a
  reverted one, or one that moved the money elsewhere);
- ``amount_mismatch``: the payer's transfer in that transaction moved another amount.

Settled records whose transaction was mined outside the audited blocks (before
``--from-block``, or after the chain head the audit started from) are left out of both sides.

``batch-settlement`` records are not single transfers (a voucher is paid by a channel claim,
and the contract's settle pays many claims in one transfer): they and the contract's
transfers to ``pay_to`` stay out of this comparison and are audited by
`payrouter.ledger.channel_audit` when `audit` is given the channel store and contract.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from payrouter.chain import AUTHORIZATION_USED_TOPIC, TRANSFER_TOPIC, ChainClient, ChainError
from payrouter.channels.contract import BatchSettlementContract
from payrouter.channels.records import SCHEME as BATCH_SCHEME
from payrouter.channels.store import ChannelStore
from payrouter.journal import Journal, PaymentRecord, State
from payrouter.ledger.channel_audit import ChannelAuditReport, audit_channels
from payrouter.ledger.records import fetch_records

__all__ = ["AuditReport", "Difference", "Transfer", "audit", "compare", "transfers_to"]

# Blocks per eth_getLogs; providers cap the range (or the result count), and a refused range
# is halved until it passes.
LOG_CHUNK = 10_000

Kind = Literal["not_in_journal", "not_on_chain", "amount_mismatch"]
_KIND_ORDER: dict[str, int] = {"not_in_journal": 0, "not_on_chain": 1, "amount_mismatch": 2}


def _topic(address: str) -> str:
    return "0x" + "0" * 24 + address[2:].lower()


def _address(topic: str) -> str:
    return "0x" + topic[-40:].lower()


@dataclass(frozen=True, slots=True)
class Transfer:
    """One ERC-20 ``Transfer`` log to ``pay_to`` (hashes and addresses lower case)."""

    tx: str
    log_index: int
    block: int
    payer: str
    amount: int


@dataclass(slots=True)
class Difference:
    """One thing the chain and the journal disagree on.

    Attributes:
        kind: ``not_in_journal``, ``not_on_chain`` or ``amount_mismatch`` (module docstring).
        tx: the transaction hash (lower case; the record's as written for ``not_on_chain``).
        payer: who paid (the transfer's sender, or the record's payer).
        chain_amount: atomic units the transfer moved (None: no transfer).
        journal_amount: the settled record's ``charged`` (None: no settled record).
        record: the journal record's id ("" when none is known).
        state: that record's state ("" when none is known).
        block, log_index: where the transfer is (None: no transfer).
        note: what was found out about it, for a human.
    """

    kind: Kind
    tx: str
    payer: str
    chain_amount: int | None = None
    journal_amount: int | None = None
    record: str = ""
    state: str = ""
    block: int | None = None
    log_index: int | None = None
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        """A JSON object (amounts as integer strings)."""
        return {
            "kind": self.kind,
            "tx": self.tx,
            "payer": self.payer,
            "chain_amount": None if self.chain_amount is None else str(self.chain_amount),
            "journal_amount": None if self.journal_amount is None else str(self.journal_amount),
            "record": self.record,
            "state": self.state,
            "block": self.block,
            "log_index": self.log_index,
            "note": self.note,
        }


@dataclass(slots=True)
class AuditReport:
    """Both sides' counts and sums (atomic units), what matched, and every difference.

    Attributes:
        from_block, to_block: the audited blocks (inclusive).
        chain_count, chain_total: transfers to ``pay_to`` in those blocks.
        journal_count, journal_total: settled records of this asset and ``pay_to``, less
            ``out_of_range``.
        matched: records paired with their transfer, amount and all.
        out_of_range: settled records whose transaction is mined outside the audited blocks.
        other: settled records of another asset or ``pay_to`` (not audited).
        sweeps, sweeps_total: transfers to ``pay_to`` from the batch-settlement contract (its
            settles; audited with the channels, not here).
        channels: the channel audit (None when it was not asked for).
    """

    from_block: int
    to_block: int
    chain_count: int = 0
    chain_total: int = 0
    journal_count: int = 0
    journal_total: int = 0
    matched: int = 0
    out_of_range: int = 0
    other: int = 0
    sweeps: int = 0
    sweeps_total: int = 0
    differences: list[Difference] = field(default_factory=list)
    channels: ChannelAuditReport | None = None

    @property
    def equal(self) -> bool:
        """True when the chain and the journal agree on every transfer (and channel count)."""
        return not self.differences and (self.channels is None or self.channels.equal)

    def to_json(self) -> dict[str, Any]:
        """A JSON object (amounts as integer strings)."""
        return {
            "from_block": self.from_block,
            "to_block": self.to_block,
            "chain": {"count": self.chain_count, "total": str(self.chain_total)},
            "journal": {"count": self.journal_count, "total": str(self.journal_total)},
            "matched": self.matched,
            "out_of_range": self.out_of_range,
            "other": self.other,
            "sweeps": {"count": self.sweeps, "total": str(self.sweeps_total)},
            "equal": self.equal,
            "differences": [d.to_json() for d in self.differences],
            "channels": None if self.channels is None else self.channels.to_json(),
        }


async def transfers_to(
    chain: ChainClient, asset: str, pay_to: str, from_block: int, to_block: int, chunk: int = LOG_CHUNK
) -> list[Transfer]:
    """Every ``Transfer(*, pay_to, value)`` log of ``asset`` in ``[from_block, to_block]``, in chain order.

    Logs marked ``removed`` (a reorganisation dropped their block) are left out.

    Raises:
        ChainError: the node failed, even for a single block.
    """
    topics: list[str | None] = [TRANSFER_TOPIC, None, _topic(pay_to)]
    out: list[Transfer] = []
    start = from_block
    span = max(chunk, 1)
    while start <= to_block:
        end = min(start + span - 1, to_block)
        try:
            logs = await chain.call(
                "eth_getLogs", [{"address": asset, "topics": topics, "fromBlock": hex(start), "toBlock": hex(end)}]
            )
        except ChainError:
            if span == 1:
                raise
            span = max(span // 2, 1)
            continue
        for entry in logs or []:
            if entry.get("removed"):
                continue
            out.append(
                Transfer(
                    tx=str(entry["transactionHash"]).lower(),
                    log_index=int(entry["logIndex"], 16),
                    block=int(entry["blockNumber"], 16),
                    payer=_address(str(entry["topics"][1])),
                    amount=int(str(entry.get("data") or "0x0"), 16),
                )
            )
        start = end + 1
    out.sort(key=lambda t: (t.block, t.log_index))
    return out


def compare(transfers: Iterable[Transfer], records: Iterable[PaymentRecord]) -> tuple[int, list[Difference]]:
    """Pair settled ``records`` with ``transfers`` by transaction (pure: no I/O).

    Within a transaction a record takes the first unpaired transfer from its payer with its
    ``charged`` amount; failing that, the first from its payer (an ``amount_mismatch``).
    Returns ``(matched, differences)``, differences ordered by kind, then block and log
    index, then record id.
    """
    chain_by_tx: dict[str, list[Transfer]] = defaultdict(list)
    for transfer in transfers:
        chain_by_tx[transfer.tx].append(transfer)
    journal_by_tx: dict[str, list[PaymentRecord]] = defaultdict(list)
    for record in records:
        journal_by_tx[record.tx.lower()].append(record)
    matched = 0
    differences: list[Difference] = []
    for tx in chain_by_tx.keys() | journal_by_tx.keys():
        left = list(chain_by_tx.get(tx, []))
        unpaired: list[PaymentRecord] = []
        for record in journal_by_tx.get(tx, []):
            exact = _take(left, record.payer.lower(), record.charged)
            if exact is not None:
                matched += 1
            else:
                unpaired.append(record)
        for record in unpaired:
            other = _take(left, record.payer.lower(), None)
            if other is not None:
                differences.append(
                    Difference(
                        "amount_mismatch",
                        tx,
                        other.payer,
                        chain_amount=other.amount,
                        journal_amount=record.charged,
                        record=record.id,
                        state=record.state,
                        block=other.block,
                        log_index=other.log_index,
                        note="the transfer moved another amount than the record charged",
                    )
                )
            else:
                differences.append(
                    Difference(
                        "not_on_chain",
                        record.tx,
                        record.payer.lower(),
                        journal_amount=record.charged,
                        record=record.id,
                        state=record.state,
                    )
                )
        for transfer in left:
            differences.append(
                Difference(
                    "not_in_journal",
                    tx,
                    transfer.payer,
                    chain_amount=transfer.amount,
                    block=transfer.block,
                    log_index=transfer.log_index,
                )
            )
    differences.sort(key=lambda d: (_KIND_ORDER[d.kind], d.block or 0, d.log_index or 0, d.record, d.tx))
    return matched, differences


def _take(transfers: list[Transfer], payer: str, amount: int | None) -> Transfer | None:
    for i, transfer in enumerate(transfers):
        if transfer.payer == payer and (amount is None or transfer.amount == amount):
            return transfers.pop(i)
    return None


async def audit(
    journal: Journal,
    chain: ChainClient,
    asset: str,
    pay_to: str,
    from_block: int = 0,
    channels: tuple[ChannelStore, BatchSettlementContract] | None = None,
) -> AuditReport:
    """Audit the journal's settled records of ``asset`` paid to ``pay_to`` against the chain,
    from ``from_block`` to the chain head when the audit starts.

    The chain is read before the journal, so a payment settling meanwhile shows at worst as
    ``not_in_journal`` with its record's current state (the next audit clears it).

    With ``channels`` (the channel store and the batch-settlement contract), channel money is
    audited too (`payrouter.ledger.channel_audit`; ``report.channels``), over every block.

    Raises:
        ChainError: the node could not be read.
        StoreError: the journal or the channel store could not be read.
    """
    head = int(await chain.call("eth_blockNumber", []), 16)
    report = AuditReport(from_block, head)
    transfers = await transfers_to(chain, asset, pay_to, from_block, head)
    if channels is not None:
        store, contract = channels
        sweeps = [t for t in transfers if t.payer == contract.address.lower()]
        transfers = [t for t in transfers if t.payer != contract.address.lower()]
        report.sweeps, report.sweeps_total = len(sweeps), sum(t.amount for t in sweeps)
        report.channels = await audit_channels(journal, store, contract, asset, pay_to)
    settled: list[PaymentRecord] = []
    for record in await fetch_records(journal, settled=True):
        if record.state != State.SETTLED or record.scheme == BATCH_SCHEME:
            continue
        if record.asset.lower() != asset.lower() or record.pay_to.lower() != pay_to.lower():
            report.other += 1
            continue
        settled.append(record)
    report.matched, differences = compare(transfers, settled)
    left_out: set[str] = set()
    for diff in differences:
        if diff.kind == "not_on_chain":
            await _explain_missing(chain, diff, report, left_out)
        elif diff.kind == "not_in_journal":
            await _explain_unrecorded(chain, journal, asset, diff)
    report.differences = [d for d in differences if d.record not in left_out or d.kind != "not_on_chain"]
    kept = [r for r in settled if r.id not in left_out]
    report.chain_count, report.chain_total = len(transfers), sum(t.amount for t in transfers)
    report.journal_count, report.journal_total = len(kept), sum(r.charged for r in kept)
    return report


async def _explain_missing(chain: ChainClient, diff: Difference, report: AuditReport, left_out: set[str]) -> None:
    if not diff.tx:
        diff.note = "the settled record has no transaction hash"
        return
    try:
        receipt = await chain.receipt(diff.tx)
    except ChainError as exc:
        # a malformed hash in the record: the node refuses to look it up
        diff.note = f"the node cannot look the transaction up: {exc}"
        return
    if receipt is None:
        diff.note = "no such transaction on chain"
    elif receipt.block_number < report.from_block or receipt.block_number > report.to_block:
        report.out_of_range += 1
        left_out.add(diff.record)
    elif receipt.status != 1:
        diff.note = f"the transaction reverted (block {receipt.block_number})"
    else:
        diff.note = f"the transaction (block {receipt.block_number}) moved nothing from the payer to pay_to"


async def _explain_unrecorded(chain: ChainClient, journal: Journal, asset: str, diff: Difference) -> None:
    # The token logs AuthorizationUsed(payer, nonce) beside an EIP-3009 transfer: that names
    # the journal record (exact:<payer>:<nonce>) the payment should have.
    receipt = await chain.receipt(diff.tx)
    nonce = ""
    for entry in receipt.logs if receipt is not None else []:
        topics = [str(t).lower() for t in entry.get("topics", [])]
        if (
            str(entry.get("address", "")).lower() == asset.lower()
            and len(topics) == 3
            and topics[0] == AUTHORIZATION_USED_TOPIC
            and _address(topics[1]) == diff.payer
        ):
            nonce = topics[2]
            break
    if not nonce:
        diff.note = "not an EIP-3009 authorization from this payer: a plain transfer"
        return
    record_id = f"exact:{diff.payer}:{nonce}"
    record = await journal.get(record_id)
    diff.record = record_id
    if record is None:
        diff.note = "no journal record for this authorization"
        return
    diff.state = record.state
    diff.note = f"the journal record is {record.state}"
    if record.tx and record.tx.lower() != diff.tx:
        diff.note += f" with transaction {record.tx}"
