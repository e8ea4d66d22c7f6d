"""The money our channels moved on chain, journaled from the contract's logs.

The gate journals the deposits and refunds it sends, but an answer lost to a node or a
facilitator can leave one landing after the gate gave up on it, and a payer moves money
without us: a deposit straight into the contract, a withdrawal finalised after its delay. The
claimer's pass calls `journal_movements` over the blocks it has not scanned yet, so the journal
holds every ``Deposited``, ``Refunded`` and ``WithdrawFinalized`` of our channels and a
channel's deposits minus its refunds and withdrawals add up to its on-chain ``balance``
(`payrouter.ledger.channel_audit` checks it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from payrouter.chain import ChainClient, ChainError
from payrouter.channels.contract import DEPOSITED_TOPIC, REFUNDED_TOPIC, WITHDRAW_FINALIZED_TOPIC, word
from payrouter.channels.records import DEPOSIT_PATH, MOVEMENT_OVER, REFUND_PATH, WITHDRAW_PATH, movement_record
from payrouter.journal import Journal, PaymentRecord, State

__all__ = ["MOVEMENT_TOPICS", "journal_movements", "movements_in"]

MOVEMENT_TOPICS = {DEPOSITED_TOPIC: DEPOSIT_PATH, REFUNDED_TOPIC: REFUND_PATH, WITHDRAW_FINALIZED_TOPIC: WITHDRAW_PATH}
# channel ids per eth_getLogs (an OR of topics): nodes cap a filter's size
_IDS_PER_QUERY = 100


def _address(topic: Any) -> str:
    return "0x" + str(topic)[-40:]


def movements_in(logs: Iterable[dict[str, Any]], where: Mapping[str, str]) -> list[PaymentRecord]:
    """The movement records ``logs`` (the contract's, of any kind) hold: one per deposit or
    withdrawal transaction and channel (amounts summed), one per refund nonce and channel.
    ``where``: the records' ``network``, ``asset`` and ``pay_to``.

    Raises:
        ChainError: a log of a movement kind is malformed.
    """
    records: dict[str, PaymentRecord] = {}
    for entry in logs:
        topics = [str(t).lower() for t in entry.get("topics") or []]
        path = MOVEMENT_TOPICS.get(topics[0]) if topics else None
        if path is None:
            continue
        if len(topics) < 3:
            raise ChainError(f"a {path} log names {len(topics)} topics")
        channel_id, payer, tx = topics[1], _address(topics[2]), str(entry["transactionHash"]).lower()
        data = entry.get("data")
        # Refunded(…, nonce, amount); Deposited and WithdrawFinalized(…, amount)
        nonce, amount = (word(data, 0), word(data, 1)) if path == REFUND_PATH else (0, word(data, 0))
        record = movement_record(path, channel_id, payer, amount, tx, refund_nonce=nonce, **where)
        seen = records.get(record.id)
        if seen is not None and path != REFUND_PATH:  # two deposits into one channel in one transaction
            record = record.moved(State.SETTLED, amount=seen.amount + amount)
        records[record.id] = record
    return list(records.values())


async def journal_movements(
    chain: ChainClient,
    contract: str,
    journal: Journal,
    channel_ids: Iterable[str],
    start: int,
    end: int,
    where: Mapping[str, str],
    settling: Callable[[PaymentRecord], Awaitable[None]] | None = None,
) -> list[PaymentRecord]:
    """Journal every deposit, refund and finalised withdrawal of ``channel_ids`` (0x hex) that
    the contract at ``contract`` logged in blocks ``start`` to ``end`` and the journal does not
    hold settled (records of ``where``, as in `movements_in`); return the records written. ``settling`` is called with a pending refund
    record before its log's record replaces it (its channel is held: the claimer frees it).

    Raises:
        ChainError: the node failed.
        StoreError: the journal failed (what was written stays written).
    """
    ids = sorted({c.lower() for c in channel_ids})
    written: list[PaymentRecord] = []
    for first in range(0, len(ids), _IDS_PER_QUERY):
        chunk = ids[first : first + _IDS_PER_QUERY]
        logs = await chain.logs_between(contract, [list(MOVEMENT_TOPICS), chunk], start, end)
        for record in movements_in(logs, where):
            known = await journal.get(record.id)
            if known is not None and known.state == State.SETTLED:
                continue
            if known is not None and known.state == State.PENDING and settling is not None:
                await settling(known)
            # over a refund journaled pending (its answer lost) or given up on, too
            done, _ = await journal.advance(record, MOVEMENT_OVER)
            if done:
                written.append(record)
    return written
