"""Client channel stores: compare-and-set semantics, and writers racing across threads and processes
(a file store in a temp directory, a real Redis on 127.0.0.1:6379 under a unique prefix)."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from payrouter.client.channels import (
    ChannelState,
    ChannelStore,
    FileChannelStore,
    MemoryChannelStore,
    RedisChannelStore,
    channel_key,
    update_channel,
)
from tests.redis_keys import run_token

REDIS_URL = "redis://127.0.0.1:6379/0"
KEY = channel_key("eip155:31337", "0x" + "AA" * 20, "0x" + "BB" * 20, "0x" + "CC" * 20)
CONFIG = {"payer": "0x" + "cc" * 20, "withdrawDelay": 900, "salt": "0x" + "00" * 64}


def _state(balance: int = 0, charged: int = 0, signed_max: int = 0, refunded: int = 0) -> ChannelState:
    return ChannelState(KEY, "eip155:31337", "0x" + "11" * 32, CONFIG, balance, charged, signed_max, refunded)


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    prefix = f"payrouter-test-channels-{run_token()}"
    yield prefix
    with redis.Redis.from_url(REDIS_URL) as r:
        for key in r.scan_iter(f"{prefix}:*"):
            r.delete(key)


@pytest.fixture(params=["memory", "file", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path, redis_prefix: str) -> ChannelStore:
    if request.param == "memory":
        return MemoryChannelStore()
    if request.param == "file":
        return FileChannelStore(tmp_path / "channels")
    return RedisChannelStore(REDIS_URL, redis_prefix)


def test_key_ignores_address_case() -> None:
    assert KEY == channel_key("eip155:31337", "0x" + "aa" * 20, "0x" + "bb" * 20, "0x" + "cc" * 20)
    assert KEY != channel_key("eip155:8453", "0x" + "aa" * 20, "0x" + "bb" * 20, "0x" + "cc" * 20)


def test_compare_and_set(store: ChannelStore) -> None:
    assert store.get(KEY) is None and store.list() == []
    assert not store.compare_and_set(KEY, 1, _state())  # nothing stored: only version 0 matches
    assert store.compare_and_set(KEY, 0, _state(balance=5_000, charged=700))
    stored = store.get(KEY)
    assert stored is not None and stored.version == 1
    assert (stored.balance, stored.charged, stored.config) == (5_000, 700, CONFIG)
    assert not store.compare_and_set(KEY, 0, _state())  # a stale writer loses
    assert store.compare_and_set(KEY, 1, replace(stored, charged=900))
    again = store.get(KEY)
    assert again is not None and (again.version, again.charged, again.remaining) == (2, 900, 4_100)
    assert [s.channel_id for s in store.list()] == ["0x" + "11" * 32]
    assert store.compare_and_set(KEY, 2, None)
    assert store.get(KEY) is None and store.list() == []


def test_amounts_beyond_float_precision_survive(store: ChannelStore) -> None:
    big = 2**128 - 1
    update_channel(store, KEY, lambda current: _state(balance=big, charged=big - 1))
    stored = store.get(KEY)
    assert stored is not None and (stored.balance, stored.charged, stored.remaining) == (big, big - 1, 1)


def test_update_channel_writes_nothing_when_unchanged(store: ChannelStore) -> None:
    written = update_channel(store, KEY, lambda current: _state(balance=10))
    assert written is not None and written.version == 1 and written.updated_at > 0
    same = update_channel(store, KEY, lambda current: current)
    assert same is not None and same.version == 1
    assert update_channel(store, KEY, lambda current: None) is None
    assert store.get(KEY) is None


def _charge_many(store: ChannelStore, times: int) -> None:
    for _ in range(times):
        update_channel(store, KEY, lambda c: replace(c or _state(), charged=(c.charged if c else 0) + 1), attempts=500)


def _race_threads(store: ChannelStore) -> None:
    threads = [threading.Thread(target=_charge_many, args=(store, 25)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_threads_racing_lose_no_update(store: ChannelStore) -> None:
    _race_threads(store)
    stored = store.get(KEY)
    assert stored is not None and stored.charged == 200 and stored.version == 200


def _file_worker(directory: str, times: int) -> None:
    _charge_many(FileChannelStore(directory), times)


def _redis_worker(prefix: str, times: int) -> None:
    _charge_many(RedisChannelStore(REDIS_URL, prefix), times)


def _race_processes(target: object, arg: str) -> None:
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no shared locks or sockets
    processes = [ctx.Process(target=target, args=(arg, 40)) for _ in range(4)]  # type: ignore[arg-type]
    for p in processes:
        p.start()
    for p in processes:
        p.join(60)
        assert p.exitcode == 0


def test_processes_racing_on_a_file_store(tmp_path: Path) -> None:
    directory = tmp_path / "channels"
    _race_processes(_file_worker, str(directory))
    stored = FileChannelStore(directory).get(KEY)
    assert stored is not None and stored.charged == 160
    files = sorted(p.name for p in directory.iterdir())
    assert len([f for f in files if f.endswith(".json")]) == 1  # no temp file left behind
    assert not [f for f in files if f.startswith(".tmp-")]
    assert oct(directory.stat().st_mode & 0o777) == "0o700"
    assert oct((directory / files[0]).stat().st_mode & 0o777) == "0o600"


def test_processes_racing_on_redis(redis_prefix: str) -> None:
    _race_processes(_redis_worker, redis_prefix)
    stored = RedisChannelStore(REDIS_URL, redis_prefix).get(KEY)
    assert stored is not None and stored.charged == 160


def test_state_json_round_trip() -> None:
    state = _state(balance=10, charged=3, signed_max=4, refunded=1)
    state = replace(state, url="http://router/v1/chat/completions", version=7)
    assert ChannelState.from_json(state.to_json()) == state
    with pytest.raises(ValueError):
        ChannelState.from_json('{"balance": 1}')
    with pytest.raises(ValueError):
        ChannelState.from_json(state.to_json().replace('"balance": "10"', '"balance": 10.5'))
