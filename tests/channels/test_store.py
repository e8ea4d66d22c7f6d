"""Every channel store keeps the same rules: in memory, on Redis (real, on 127.0.0.1:6379) and on a
real local Redis Cluster (`tests.cluster`)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator

import pytest
import redis

from payrouter.channels import (
    ChannelState,
    ChannelStore,
    InvalidCharge,
    MemoryChannelStore,
    RedisChannelStore,
)
from payrouter.store.redis import connect
from tests.redis_keys import run_token

from ..cluster import REDIS_BACKENDS, SINGLE_REDIS_URL, delete_keys, redis_url_for
from ..redis_keys import delete_namespace

REDIS_URL = SINGLE_REDIS_URL
PAYER = "0x" + "11" * 20
CONFIG = '{"payer":"0x1111111111111111111111111111111111111111","salt":"0x00"}'
TTL = 60_000


@pytest.fixture(params=["memory", *REDIS_BACKENDS])
async def stores(request: pytest.FixtureRequest) -> AsyncIterator[tuple[ChannelStore, ChannelStore]]:
    """Two handles on one set of channels: two server instances (two Redis connections, on one
    node or a Cluster), or one memory store twice (a process has only one)."""
    if request.param == "memory":
        memory = MemoryChannelStore()
        yield memory, memory
        return
    url = redis_url_for(request.param, request)
    namespace = f"payrouter-test-channels-{run_token()}"
    first, second = RedisChannelStore(connect(url), namespace), RedisChannelStore(connect(url), namespace)
    try:
        yield first, second
    finally:
        try:
            await first.close()
            await second.close()
        finally:
            delete_keys(url, namespace)


@pytest.fixture
def store(stores: tuple[ChannelStore, ChannelStore]) -> ChannelStore:
    return stores[0]


def _cid() -> str:
    return "0x" + secrets.token_hex(32)


def _token() -> str:
    return secrets.token_hex(8)


async def _sync(
    store: ChannelStore,
    cid: str,
    balance: int = 10_000,
    total_claimed: int = 0,
    withdraw_requested_at: int = 0,
    synced_at_ms: int = 1_000,
) -> ChannelState:
    """A read of the chain reaching the store."""
    return await store.upsert_onchain(
        cid,
        config=CONFIG,
        payer=PAYER,
        balance=balance,
        total_claimed=total_claimed,
        withdraw_requested_at=withdraw_requested_at,
        refund_nonce=0,
        synced_at_ms=synced_at_ms,
    )


async def _open(store: ChannelStore, balance: int = 10_000, total_claimed: int = 0) -> str:
    """A new channel (after its deposit); its id."""
    cid = _cid()
    await _sync(store, cid, balance=balance, total_claimed=total_claimed)
    return cid


async def _state(store: ChannelStore, cid: str) -> ChannelState:
    state = await store.get(cid)
    assert state is not None
    return state


async def _pay(store: ChannelStore, cid: str, amount: int, charge: int, ttl_ms: int = TTL) -> ChannelState:
    """One whole request: reserve with the next voucher, commit ``charge``."""
    before = await _state(store, cid)
    token = _token()
    signed = before.charged + amount
    reserved = await store.reserve(
        cid, amount=amount, signed_max=signed, signature=f"sig{signed}", token=token, ttl_ms=ttl_ms
    )
    assert reserved.kind == "ok", reserved
    after = await store.commit(cid, token, charge)
    assert after is not None
    return after


async def test_upsert_creates_a_channel_with_its_mirror(store: ChannelStore) -> None:
    cid = _cid()
    created = await store.upsert_onchain(
        cid.upper().replace("0X", "0x"),
        config=CONFIG,
        payer=PAYER,
        balance=5000,
        total_claimed=1200,
        withdraw_requested_at=0,
        refund_nonce=3,
        synced_at_ms=1_700_000_000_000,
    )
    assert created == ChannelState(
        channel_id=cid,
        config=CONFIG,
        payer=PAYER,
        balance=5000,
        total_claimed=1200,
        withdraw_requested_at=0,
        refund_nonce=3,
        synced_at_ms=1_700_000_000_000,
        charged=1200,  # a channel first seen with claims on it: nothing is owed above them
        signed_max=0,
        signature="",
        pending="",
        pending_until_ms=0,
    )
    assert await store.get(cid) == created
    assert created.to_wire() == {
        "channelId": cid,
        "balance": "5000",
        "totalClaimed": "1200",
        "withdrawRequestedAt": 0,
        "refundNonce": "3",
        "chargedCumulativeAmount": "1200",
    }
    other = await _open(store)
    assert sorted(await store.ids()) == sorted([cid, other])
    found = await store.get_many([cid, _cid(), other.upper().replace("0X", "0x"), cid])
    assert found == {cid: created, other: await _state(store, other)}
    assert await store.get_many([]) == {}
    assert await store.get(_cid()) is None


async def test_a_request_reserves_then_commits_its_charge(store: ChannelStore) -> None:
    cid = await _open(store, balance=10_000)
    token = _token()
    reserved = await store.reserve(cid, amount=700, signed_max=700, signature="0xsig1", token=token, ttl_ms=TTL)
    assert reserved.ok and reserved.state is not None
    assert reserved.state.pending == token and reserved.state.pending_until_ms > 0
    assert (reserved.state.charged, reserved.state.signed_max) == (0, 0)  # nothing adopted before the commit
    committed = await store.commit(cid, token, 500)  # dynamic price: less than the voucher allows
    assert committed is not None
    assert (committed.charged, committed.signed_max, committed.signature) == (500, 700, "0xsig1")
    assert (committed.pending, committed.pending_until_ms) == ("", 0)
    assert await store.get(cid) == committed
    # the next voucher builds on what was charged, not on the last max
    second = await _pay(store, cid, amount=700, charge=700)
    assert (second.charged, second.signed_max, second.signature) == (1200, 1200, "sig1200")


async def test_reserve_on_an_unknown_channel_is_not_found(store: ChannelStore) -> None:
    reserved = await store.reserve(_cid(), amount=1, signed_max=1, signature="s", token=_token(), ttl_ms=TTL)
    assert (reserved.kind, reserved.state, reserved.ok) == ("not_found", None, False)


async def test_a_voucher_off_the_charged_amount_is_a_mismatch(store: ChannelStore) -> None:
    cid = await _open(store)
    stored = await _pay(store, cid, amount=1000, charge=600)
    for signed_max in (1599, 1601, 2000, 0):
        reserved = await store.reserve(
            cid, amount=1000, signed_max=signed_max, signature="s", token=_token(), ttl_ms=TTL
        )
        assert reserved.kind == "mismatch"
        # what the corrective 402 reports: the charged amount and the last voucher
        assert reserved.state == stored
        assert (stored.charged, stored.signed_max, stored.signature) == (600, 1000, "sig1000")
    # a voucher below what one request costs: no stored charged can match
    low = await store.reserve(cid, amount=1000, signed_max=999, signature="s", token=_token(), ttl_ms=TTL)
    assert low.kind == "mismatch" and await store.get(cid) == stored


async def test_a_voucher_above_the_balance_is_refused(store: ChannelStore) -> None:
    cid = await _open(store, balance=1000)
    over = await store.reserve(cid, amount=1001, signed_max=1001, signature="s", token=_token(), ttl_ms=TTL)
    assert over.kind == "exceeds_balance" and over.state is not None and over.state.pending == ""
    exact = await store.reserve(cid, amount=1000, signed_max=1000, signature="s", token=_token(), ttl_ms=TTL)
    assert exact.kind == "ok"


async def test_a_channel_being_withdrawn_takes_no_new_voucher_but_a_refund(store: ChannelStore) -> None:
    cid = await _open(store)
    await _pay(store, cid, amount=300, charge=300)
    await _sync(store, cid, withdraw_requested_at=1_700_000_000, synced_at_ms=2_000)
    reserved = await store.reserve(cid, amount=100, signed_max=400, signature="s", token=_token(), ttl_ms=TTL)
    assert reserved.kind == "withdrawing" and reserved.state is not None and reserved.state.pending == ""
    # a refund's voucher (max == charged) adds nothing; it is what ends the channel
    token = _token()
    refund = await store.reserve(cid, amount=100, signed_max=300, signature="r", token=token, ttl_ms=TTL, refund=True)
    assert refund.kind == "ok"
    committed = await store.commit(cid, token, 0)
    assert committed is not None and (committed.charged, committed.signed_max, committed.signature) == (300, 300, "r")


async def test_a_refund_voucher_must_equal_charged(store: ChannelStore) -> None:
    cid = await _open(store)
    await _pay(store, cid, amount=300, charge=200)
    wrong = await store.reserve(cid, amount=0, signed_max=300, signature="r", token=_token(), ttl_ms=TTL, refund=True)
    assert wrong.kind == "mismatch"
    token = _token()
    right = await store.reserve(cid, amount=0, signed_max=200, signature="r", token=token, ttl_ms=TTL, refund=True)
    assert right.kind == "ok"
    with pytest.raises(InvalidCharge):
        await store.commit(cid, token, 1)  # a refund's voucher allows no charge


async def test_one_request_at_a_time(store: ChannelStore) -> None:
    cid = await _open(store)
    first = _token()
    assert (await store.reserve(cid, amount=10, signed_max=10, signature="a", token=first, ttl_ms=TTL)).ok
    busy = await store.reserve(cid, amount=10, signed_max=10, signature="b", token=_token(), ttl_ms=TTL)
    assert busy.kind == "busy" and busy.state is not None and busy.state.pending == first
    # busy is told before the voucher is checked: the client's voucher may be right
    wrong = await store.reserve(cid, amount=10, signed_max=99, signature="b", token=_token(), ttl_ms=TTL)
    assert wrong.kind == "busy"
    # the holder asking again (a retried call) keeps it
    again = await store.reserve(cid, amount=10, signed_max=10, signature="a", token=first, ttl_ms=TTL)
    assert again.ok and again.state is not None and again.state.pending == first
    assert await store.release(cid, first)
    assert (await store.reserve(cid, amount=10, signed_max=10, signature="b", token=_token(), ttl_ms=TTL)).ok


async def test_a_lapsed_reservation_does_not_block(store: ChannelStore) -> None:
    cid = await _open(store)
    stale = _token()
    assert (await store.reserve(cid, amount=10, signed_max=10, signature="a", token=stale, ttl_ms=50)).ok
    await asyncio.sleep(0.15)
    # still its token's until somebody takes the channel: a slow request can still be charged
    assert (await _state(store, cid)).pending == stale
    fresh = _token()
    taken = await store.reserve(cid, amount=10, signed_max=10, signature="b", token=fresh, ttl_ms=TTL)
    assert taken.ok and taken.state is not None and taken.state.pending == fresh
    # the lapsed request can neither charge nor free the channel any more
    assert await store.commit(cid, stale, 10) is None
    assert not await store.release(cid, stale)
    committed = await store.commit(cid, fresh, 10)
    assert committed is not None and (committed.charged, committed.signature) == (10, "b")


async def test_a_lapsed_reservation_can_still_commit_until_taken(store: ChannelStore) -> None:
    cid = await _open(store)
    token = _token()
    assert (await store.reserve(cid, amount=10, signed_max=10, signature="a", token=token, ttl_ms=30)).ok
    await asyncio.sleep(0.1)
    committed = await store.commit(cid, token, 10)
    assert committed is not None and committed.charged == 10


async def test_commit_with_a_wrong_token_changes_nothing(store: ChannelStore) -> None:
    cid = await _open(store)
    token = _token()
    reserved = await store.reserve(cid, amount=10, signed_max=10, signature="a", token=token, ttl_ms=TTL)
    assert await store.commit(cid, "someone-else", 10) is None
    assert await store.commit(cid, "", 10) is None
    assert await store.commit(_cid(), token, 10) is None
    assert not await store.release(cid, "someone-else")
    assert not await store.release(_cid(), token)
    assert await store.get(cid) == reserved.state


async def test_a_charge_beyond_the_voucher_is_refused_and_changes_nothing(store: ChannelStore) -> None:
    cid = await _open(store)
    await _pay(store, cid, amount=100, charge=40)
    token = _token()
    reserved = await store.reserve(cid, amount=100, signed_max=140, signature="a", token=token, ttl_ms=TTL)
    with pytest.raises(InvalidCharge):
        await store.commit(cid, token, 101)
    with pytest.raises(InvalidCharge):
        await store.commit(cid, token, -1)
    assert await store.get(cid) == reserved.state  # still pending, nothing charged
    committed = await store.commit(cid, token, 100)
    assert committed is not None and committed.charged == 140


async def test_a_retried_commit_is_answered_not_repeated(store: ChannelStore) -> None:
    cid = await _open(store)
    token = _token()
    assert (await store.reserve(cid, amount=100, signed_max=100, signature="a", token=token, ttl_ms=TTL)).ok
    first = await store.commit(cid, token, 60)
    assert await store.commit(cid, token, 60) == first  # its reply was lost: same answer, no second charge
    assert first is not None and (await _state(store, cid)).charged == 60


async def test_release_keeps_charged_and_the_old_voucher(store: ChannelStore) -> None:
    cid = await _open(store)
    paid = await _pay(store, cid, amount=100, charge=100)
    token = _token()
    assert (await store.reserve(cid, amount=50, signed_max=150, signature="new", token=token, ttl_ms=TTL)).ok
    assert await store.release(cid, token)
    assert await store.get(cid) == paid
    assert (paid.charged, paid.signed_max, paid.signature) == (100, 100, "sig100")
    assert await store.commit(cid, token, 50) is None  # released: nothing left to commit
    assert not await store.release(cid, token)


async def test_extend_keeps_only_its_own_reservation(store: ChannelStore) -> None:
    cid = await _open(store)
    token = _token()
    assert (await store.reserve(cid, amount=0, signed_max=0, signature="r", token=token, ttl_ms=50, refund=True)).ok
    assert await store.extend(cid, token, 3_600_000)
    assert not await store.extend(cid, _token(), 3_600_000)  # not the holder: nothing changes
    held = await _state(store, cid)
    assert held.pending == token and held.pending_until_ms > time.time() * 1000 + 3_000_000
    await asyncio.sleep(0.1)  # the first 50 ms are over: the extension holds it
    other = await store.reserve(cid, amount=10, signed_max=10, signature="v", token=_token(), ttl_ms=TTL)
    assert other.kind == "busy"
    assert await store.release(cid, token)
    assert not await store.extend(cid, token, 3_600_000)  # released: there is nothing to keep


async def test_the_mirror_never_lowers_charged_or_claims(store: ChannelStore) -> None:
    cid = await _open(store, balance=10_000)  # synced at 1000
    await _pay(store, cid, amount=500, charge=500)
    # a claim landed at 300; a fresh read says so and shows a smaller balance (a refund)
    refreshed = await _sync(store, cid, balance=8_000, total_claimed=300, synced_at_ms=2_000)
    assert (refreshed.balance, refreshed.total_claimed, refreshed.charged) == (8_000, 300, 500)
    assert (refreshed.signed_max, refreshed.signature) == (500, "sig500")
    # an older read answering late changes nothing of the mirror, nor lowers total_claimed
    late = await _sync(store, cid, balance=10_000, total_claimed=0, synced_at_ms=1_500)
    assert late == refreshed
    # lost state: the chain claims more than we remember charging
    lost = await _sync(store, cid, balance=8_000, total_claimed=900, synced_at_ms=3_000)
    assert (lost.total_claimed, lost.charged) == (900, 900)


async def test_record_claimed_only_rises(store: ChannelStore) -> None:
    cid = await _open(store)
    await _pay(store, cid, amount=500, charge=500)
    await store.record_claimed(cid, 400)
    await store.record_claimed(cid, 200)
    state = await _state(store, cid)
    assert (state.total_claimed, state.charged) == (400, 500)
    await store.record_claimed(cid, 700)  # only a lost state can put claims above charges
    state = await _state(store, cid)
    assert (state.total_claimed, state.charged) == (700, 700)
    unknown = _cid()
    await store.record_claimed(unknown, 5)
    assert await store.get(unknown) is None and unknown not in await store.ids()


async def test_delete_forgets_the_channel(store: ChannelStore) -> None:
    cid, kept = await _open(store), await _open(store)
    await store.delete(cid)
    await store.delete(cid)
    await store.delete(_cid())
    assert await store.get(cid) is None
    assert await store.ids() == [kept]
    again = await _sync(store, cid, total_claimed=50)  # a new deposit on the same config
    assert (again.charged, again.signed_max, again.signature) == (50, 0, "")


async def test_amounts_beyond_double_precision(store: ChannelStore) -> None:
    # 2**127 and its neighbours are one double apart from nothing: only exact arithmetic tells them apart
    base = 2**127
    cid = await _open(store, balance=base + 5, total_claimed=base - 1)
    state = await _state(store, cid)
    assert (state.balance, state.charged) == (base + 5, base - 1)
    over = await store.reserve(cid, amount=7, signed_max=base + 6, signature="s", token=_token(), ttl_ms=TTL)
    assert over.kind == "exceeds_balance"
    off = await store.reserve(cid, amount=5, signed_max=base + 5, signature="s", token=_token(), ttl_ms=TTL)
    assert off.kind == "mismatch"
    token = _token()
    reserved = await store.reserve(cid, amount=6, signed_max=base + 5, signature="s", token=token, ttl_ms=TTL)
    assert reserved.kind == "ok"
    with pytest.raises(InvalidCharge):
        await store.commit(cid, token, 7)
    committed = await store.commit(cid, token, 1)  # carries through every digit of 2**127 - 1
    assert committed is not None and (committed.charged, committed.signed_max) == (base, base + 5)
    # a carry into a new digit: 10**38 - 1 + 1
    nines = 10**38 - 1
    wide = await _open(store, balance=2**128 - 1, total_claimed=nines)
    paid = await _pay(store, wide, amount=2**128 - 1 - nines, charge=1)
    assert paid.charged == 10**38 and paid.signed_max == 2**128 - 1
    await store.record_claimed(wide, 10**38 + 3)
    assert (await _state(store, wide)).charged == 10**38 + 3
    await store.record_claimed(wide, 9 * 10**37)  # shorter, lexicographically larger: still lower
    assert (await _state(store, wide)).total_claimed == 10**38 + 3


async def test_out_of_range_arguments_are_refused(store: ChannelStore) -> None:
    cid = await _open(store)
    with pytest.raises(ValueError):
        await store.get("0x1234")
    with pytest.raises(ValueError):
        await store.reserve(cid, amount=-1, signed_max=1, signature="s", token="t", ttl_ms=TTL)
    with pytest.raises(ValueError):
        await store.reserve(cid, amount=1, signed_max=2**128, signature="s", token="t", ttl_ms=TTL)
    with pytest.raises(ValueError):
        await store.reserve(cid, amount=1, signed_max=1, signature="s", token="", ttl_ms=TTL)
    with pytest.raises(ValueError):
        await store.reserve(cid, amount=1, signed_max=1, signature="s", token="t", ttl_ms=0)
    with pytest.raises(ValueError):
        await _sync(store, cid, balance=2**128)
    assert (await _state(store, cid)).pending == ""


async def test_racing_instances_reserve_one_at_a_time(stores: tuple[ChannelStore, ChannelStore]) -> None:
    first, second = stores
    cid = await _open(first, balance=10**6)
    for n in range(50):
        charged = n * 10
        tokens = (f"a{n}", f"b{n}")
        results = await asyncio.gather(
            *(
                s.reserve(cid, amount=10, signed_max=charged + 10, signature=f"s{n}", token=t, ttl_ms=TTL)
                for s, t in zip(stores, tokens, strict=True)
            )
        )
        kinds = sorted(r.kind for r in results)
        assert kinds == ["busy", "ok"], (n, kinds)
        winner = tokens[[r.kind for r in results].index("ok")]
        assert await second.commit(cid, winner, 10) is not None
    state = await _state(second, cid)
    assert (state.charged, state.pending) == (500, "")


def test_redis_keys_hash_by_channel() -> None:
    """Every per-request step touches one key whose hash tag is the channel: one Cluster slot."""

    async def run() -> tuple[list[str], str]:
        namespace = f"payrouter-test-channels-{run_token()}"
        store = RedisChannelStore(connect(REDIS_URL), namespace)
        try:
            cid = await _open(store)
            token = _token()
            await store.reserve(cid, amount=1, signed_max=1, signature="s", token=token, ttl_ms=TTL)
            await store.commit(cid, token, 1)
            with redis.Redis.from_url(REDIS_URL, decode_responses=True) as client:
                found = sorted(client.scan_iter(match=f"{namespace}:*"))
            return found, f"{namespace}:channel:{{{cid}}}"
        finally:
            await store.close()
            delete_namespace(REDIS_URL, namespace)

    found, channel_key = asyncio.run(run())
    assert found == sorted([channel_key, channel_key.split(":channel:")[0] + ":channels"])
