"""The journal's rules, in memory, on one Redis node and on a Redis Cluster alike."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from payrouter.journal import Exposure, Journal, MemoryJournal, PaymentRecord, RedisJournal, State, now_ms
from payrouter.store.redis import connect
from tests.cluster import REDIS_BACKENDS, delete_keys, redis_url_for
from tests.journal.records import sample_record
from tests.redis_keys import run_token


@pytest_asyncio.fixture(params=["memory", *REDIS_BACKENDS])
async def journal(request: pytest.FixtureRequest) -> AsyncIterator[Journal]:
    """The journal in memory, on one Redis node, and on a Redis Cluster."""
    if request.param == "memory":
        yield MemoryJournal()
        return
    url = redis_url_for(request.param, request)
    namespace = f"payrouter-test-journal-{run_token()}"
    journal = RedisJournal(connect(url), namespace)
    try:
        yield journal
    finally:
        try:
            await journal.close()
        finally:
            delete_keys(url, namespace)


def _record(payer: str = "0x" + "11" * 20, owner: str = "a", amount: int = 1000) -> PaymentRecord:
    return sample_record(payer, owner=owner, amount=amount)


async def test_open_then_existing(journal: Journal) -> None:
    record = _record()
    opened = await journal.open(record)
    assert opened.outcome == "new" and opened.record.attempts == 1
    again = await journal.open(_record_like(record, owner="b"))
    assert again.outcome == "existing" and again.record.owner == "a" and again.record.state == State.CLAIMED


def _record_like(record: PaymentRecord, **changes: object) -> PaymentRecord:
    from dataclasses import replace

    return replace(record, **changes)  # type: ignore[arg-type]


async def test_transitions_are_owner_and_state_checked(journal: Journal) -> None:
    record = (await journal.open(_record())).record
    assert await journal.advance(record.moved(State.SERVING), [State.CLAIMED]) == (True, State.SERVING)
    # another owner cannot move it
    assert await journal.advance(_record_like(record, owner="x").moved(State.RELEASED), [State.SERVING]) == (
        False,
        State.SERVING,
    )
    # a transition from a state it is not in is refused
    assert (await journal.advance(record.moved(State.SETTLED), [State.SETTLING]))[0] is False
    # a retried write of the state it is already in is accepted
    assert (await journal.advance(record.moved(State.SERVING), [State.CLAIMED]))[0] is True
    answer = b'{"status":200}'
    ok, _ = await journal.advance(record.moved(State.SETTLING), [State.SERVING], answer=answer, answer_ttl=60)
    assert ok and await journal.answer(record.id) == answer
    settled = record.moved(State.SETTLED, tx="0xabc", settled_at=now_ms(), charged=record.amount)
    assert (await journal.advance(settled, [State.SETTLING]))[0]
    stored = await journal.get(record.id)
    assert stored is not None and stored.state == State.SETTLED and stored.tx == "0xabc"
    assert stored.charged == 1000 and stored.stream is False
    assert [r.id for r in await journal.records(settled=True)] == [record.id]
    assert await journal.open_records() == []


async def test_released_record_is_taken_over_by_a_new_attempt(journal: Journal) -> None:
    record = (await journal.open(_record())).record
    await journal.advance(record.moved(State.RELEASED, reason="upstream_failed"), [State.CLAIMED])
    assert [r.id for r in await journal.open_records()] == []
    again = await journal.open(_record_like(record, owner="b"))
    assert again.outcome == "new" and again.record.attempts == 2 and again.record.owner == "b"
    assert again.record.created_at == record.created_at
    assert [r.id for r in await journal.open_records()] == [record.id]


async def test_missing_record_is_written_again(journal: Journal) -> None:
    # a store that lost the record (restart without persistence) gets it back on the next write
    record = _record()
    assert (await journal.advance(record.moved(State.SETTLED, tx="0x1"), [State.SETTLING]))[0]
    assert [r.id for r in await journal.records()] == [record.id]


async def test_debts_refuse_streams_and_exposure_is_limited(journal: Journal) -> None:
    payer = "0x" + secrets.token_hex(20)
    limits = {"per_payer": 1500, "total": 10**9, "expires_ms": now_ms() + 60_000}
    first = await journal.open(_record(payer), Exposure(amount=1000, **limits))
    assert first.outcome == "new" and not first.held
    second = await journal.open(_record(payer), Exposure(amount=1000, **limits))
    assert second.outcome == "new" and second.held  # 2000 > 1500: must settle before its first byte
    assert (await journal.exposure())[0] == 1000
    # the first one's transfer failed after content went out: the payer owes it
    owed = first.record.moved(State.OWED, delivered="cut")
    assert (await journal.advance(owed, [State.CLAIMED]))[0]
    assert await journal.debts(payer) == 1 and (await journal.exposure())[0] == 0
    refused = await journal.open(_record(payer), Exposure(amount=10, **limits))
    assert refused.outcome == "debtor"
    # non-streams are not refused
    assert (await journal.open(_record(payer))).outcome == "new"
    # collected later: no longer a debtor
    assert (await journal.advance(owed.moved(State.SETTLED, tx="0x2"), [State.OWED]))[0]
    assert await journal.debts(payer) == 0
    assert (await journal.open(_record(payer), Exposure(amount=10, **limits))).outcome == "new"


async def test_expired_exposure_stops_counting(journal: Journal) -> None:
    payer = "0x" + secrets.token_hex(20)
    await journal.open(_record(payer), Exposure(amount=1000, per_payer=1000, total=1000, expires_ms=now_ms() - 1))
    later = await journal.open(
        _record(payer), Exposure(amount=1000, per_payer=1000, total=1000, expires_ms=now_ms() + 9)
    )
    assert not later.held


async def test_a_record_that_failed_verification_leaves_no_trace(journal: Journal) -> None:
    payer = "0x" + secrets.token_hex(20)
    limits = Exposure(amount=10, per_payer=100, total=100, expires_ms=now_ms() + 60_000)
    record = (await journal.open(_record(payer), limits)).record
    assert not await journal.discard(_record_like(record, owner="someone else"))
    assert await journal.discard(record)
    assert await journal.get(record.id) is None and await journal.records() == []
    assert await journal.open_records() == [] and (await journal.exposure())[0] == 0
    # a record that was released before and presented again is kept (it has a history)
    again = (await journal.open(_record(payer))).record
    await journal.advance(again.moved(State.RELEASED), [State.CLAIMED])
    reopened = (await journal.open(_record_like(again, owner="b"))).record
    assert not await journal.discard(reopened)


async def test_a_payment_whose_settlement_reverted_is_not_taken_over_again(journal: Journal) -> None:
    record = (await journal.open(_record())).record
    reverted = record.moved(State.RELEASED, reason="invalid_exact_evm_transaction_failed")
    assert (await journal.advance(reverted, [State.CLAIMED]))[0]
    again = await journal.open(_record_like(record, owner="b"))
    assert again.outcome == "existing" and again.record.owner == "a"
    # any other release leaves the payment presentable again
    other = (await journal.open(_record())).record
    await journal.advance(other.moved(State.RELEASED, reason="upstream_failed"), [State.CLAIMED])
    assert (await journal.open(_record_like(other, owner="b"))).outcome == "new"
