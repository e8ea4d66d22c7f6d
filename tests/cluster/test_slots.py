"""Multi-slot refusals caught at test time: every Lua script and every multi-key step runs on a real
Redis Cluster (which refuses a script or command whose keys span slots with CROSSSLOT), and every
family of keys that one atomic step touches hashes to one slot."""

from __future__ import annotations

import secrets

import pytest
from redis.commands.core import AsyncScript
from redis.crc import key_slot

from payrouter.channels import RedisChannelStore
from payrouter.journal import Exposure, RedisJournal, State, now_ms
from payrouter.sandbox.cluster import LocalCluster
from payrouter.store import RedisStore, keys
from payrouter.store.redis import connect
from tests.cluster import delete_keys
from tests.journal.records import sample_record
from tests.redis_keys import run_token

CONFIG = '{"payer":"0x1111111111111111111111111111111111111111","salt":"0x00"}'


def _scripts(*owners: object) -> dict[str, str]:
    """sha1 -> attribute name of every script the stores registered."""
    return {
        value.sha: f"{type(owner).__name__}.{name}"
        for owner in owners
        for name, value in vars(owner).items()
        if isinstance(value, AsyncScript)
    }


def _flush_scripts(cluster: LocalCluster) -> None:
    for node in cluster.masters_now():
        with node.client() as client:
            client.script_flush()


def _loaded(cluster: LocalCluster, shas: list[str]) -> dict[str, bool]:
    found = dict.fromkeys(shas, False)
    for node in cluster.masters_now():
        with node.client() as client:
            for sha, there in zip(shas, client.script_exists(*shas), strict=True):
                found[sha] = found[sha] or bool(there)
    return found


async def _every_store_operation(store: RedisStore) -> None:
    await store.put("q", b"v", 60)
    assert await store.get("q") == b"v"
    assert await store.incr("n", 60) == 1
    assert await store.claim("c", "a", 60) and not await store.claim("c", "b", 60)
    assert await store.replace("c", "a", "done", 60)
    assert await store.claim("d", "a", 60) and await store.release("d", "a")
    async with store.lock("l", timeout_seconds=2):
        pass


async def _every_journal_operation(journal: RedisJournal) -> None:
    payer = "0x" + secrets.token_hex(20)
    limits = Exposure(amount=10, per_payer=100, total=1000, expires_ms=now_ms() + 60_000)
    record = (await journal.open(sample_record(payer), limits)).record
    assert (await journal.advance(record.moved(State.SERVING), [State.CLAIMED]))[0]
    settling = record.moved(State.SETTLING)
    assert (await journal.advance(settling, [State.SERVING], answer=b"answer", answer_ttl=60))[0]
    assert await journal.answer(record.id) == b"answer"
    owed = settling.moved(State.OWED)
    assert (await journal.advance(owed, [State.SETTLING], drop_answer=True))[0]
    assert await journal.debts(payer) == 1
    settled = owed.moved(State.SETTLED, tx="0x1", settled_at=now_ms(), charged=record.amount)
    assert (await journal.advance(settled, [State.OWED]))[0]
    other = (await journal.open(sample_record(payer))).record
    assert await journal.discard(other)
    for _ in range(3):
        await journal.open(sample_record("0x" + secrets.token_hex(20)))
    assert len(await journal.open_records()) == 3
    assert len(await journal.records()) == 4 and len(await journal.records(settled=True)) == 1
    assert (await journal.get(record.id)) is not None
    assert (await journal.exposure())[0] == 0


async def _every_channel_operation(channels: RedisChannelStore) -> None:
    ids = ["0x" + secrets.token_hex(32) for _ in range(24)]
    for cid in ids:
        await channels.upsert_onchain(
            cid,
            config=CONFIG,
            payer="0x" + "11" * 20,
            balance=10_000,
            total_claimed=0,
            withdraw_requested_at=0,
            refund_nonce=0,
            synced_at_ms=1,
        )
    # channels on every master: one pipeline of reads across slots
    assert sorted(await channels.get_many(ids)) == sorted(ids)
    assert sorted(await channels.ids()) == sorted(ids)
    cid = ids[0]
    reserved = await channels.reserve(cid, amount=5, signed_max=5, signature="s", token="t1", ttl_ms=60_000)
    assert reserved.kind == "ok"
    assert await channels.commit(cid, "t1", 5) is not None
    assert (await channels.reserve(cid, amount=5, signed_max=10, signature="s", token="t2", ttl_ms=60_000)).kind == "ok"
    assert await channels.extend(cid, "t2", 3_600_000) and not await channels.extend(cid, "t1", 3_600_000)
    assert await channels.release(cid, "t2")
    await channels.record_claimed(cid, 5)
    await channels.delete(cid)
    assert await channels.get(cid) is None


async def test_every_script_and_multi_key_step_runs_on_the_cluster(redis_cluster: LocalCluster) -> None:
    namespace = f"payrouter-test-slots-{run_token()}"
    url = redis_cluster.url
    store = RedisStore(url, namespace)
    journal = RedisJournal(connect(url), namespace)
    channels = RedisChannelStore(connect(url), namespace)
    scripts = _scripts(store, journal, channels)
    assert len(scripts) == 13, scripts  # a new script must be added to the operations above
    _flush_scripts(redis_cluster)
    try:
        await _every_store_operation(store)
        await _every_journal_operation(journal)
        await _every_channel_operation(channels)
    finally:
        for closing in (store, journal, channels):
            await closing.close()
        delete_keys(url, namespace)
    loaded = _loaded(redis_cluster, list(scripts))
    assert all(loaded.values()), [scripts[sha] for sha, ok in loaded.items() if not ok]


@pytest.mark.parametrize("namespace", ["payrouter", "payrouter-test-x"])
def test_keys_one_atomic_step_touches_share_a_slot(namespace: str) -> None:
    for group, names in keys.atomic_groups().items():
        slots = {key_slot(f"{namespace}:{name}".encode()) for name in names}
        assert len(slots) == 1, f"{group}: {names} span slots {slots}"


def test_channels_spread_over_the_slots() -> None:
    # hashed by their id, not by a shared tag: channels are spread over every master
    slots = {key_slot(f"payrouter:{keys.channel('0x' + secrets.token_hex(32))}".encode()) for _ in range(64)}
    assert len(slots) > 32
