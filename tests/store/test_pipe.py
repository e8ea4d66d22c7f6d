"""The paid path's pipelined Redis connection (`payrouter.store.pipe`) and `send_script` over it,
against real redis-servers: the shared one, and private ones that are restarted, paused with
SIGSTOP or password-protected."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis

from payrouter.store import StoreError
from payrouter.store.base import Written
from payrouter.store.pipe import PipeBroken, ScriptPipe, written_together
from payrouter.store.redis import RedisClient, connect, send_script
from tests.private_redis import PrivateRedis
from tests.redis_keys import REDIS_URL, run_token

ECHO = "return {ARGV[1], redis.call('incr', KEYS[1])}"
SET = "redis.call('set', KEYS[1], ARGV[1]) return ARGV[1]"


@pytest.fixture
async def shared() -> AsyncIterator[tuple[RedisClient, ScriptPipe, str]]:
    client = connect(REDIS_URL)
    pipe = ScriptPipe.of(client)
    assert pipe is not None
    prefix = f"pipe-test:{run_token()}"
    try:
        yield client, pipe, prefix
    finally:
        await pipe.close()
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@pytest.fixture
async def private(private_redis: PrivateRedis) -> AsyncIterator[tuple[RedisClient, ScriptPipe, PrivateRedis]]:
    """A client and its pipe on a private redis-server (restarted, paused), closed afterwards."""
    client = connect(private_redis.url)
    pipe = ScriptPipe.of(client)
    assert pipe is not None and private_redis.process is not None
    try:
        yield client, pipe, private_redis
    finally:
        if private_redis.process is not None:
            os.kill(private_redis.process.pid, signal.SIGCONT)
        await pipe.close()
        await client.aclose()


async def test_concurrent_scripts_each_get_their_own_reply(shared: tuple[RedisClient, ScriptPipe, str]) -> None:
    client, pipe, prefix = shared
    script = client.register_script(ECHO)
    counter = f"{prefix}:n"
    await client.script_load(ECHO)  # held: every call goes through the pipe

    async def one(i: int) -> list[bytes | int]:
        sent = await send_script(client, script, [counter], [f"call-{i}"], pipe)
        reply: list[bytes | int] = await sent.reply()
        return reply

    replies = await asyncio.gather(*(one(i) for i in range(300)))
    assert [r[0] for r in replies] == [f"call-{i}".encode() for i in range(300)]
    # one connection, commands in the order they were written: the counter counts them in order
    assert [r[1] for r in replies] == list(range(1, 301))
    assert await client.script_exists(script.sha) == [True]


async def test_the_command_has_left_before_its_reply_is_read(shared: tuple[RedisClient, ScriptPipe, str]) -> None:
    client, pipe, prefix = shared
    script = client.register_script(SET)
    await script(keys=[f"{prefix}:warm"], args=["x"])  # loaded, so the pipe's EVALSHA runs
    key = f"{prefix}:written"
    sent = await send_script(client, script, [key], ["charged"], pipe)
    # another connection sees the write while this one has not read a byte of the reply
    with redis.Redis.from_url(REDIS_URL) as other:
        deadline = time.monotonic() + 5
        while other.get(key) != b"charged":
            assert time.monotonic() < deadline, "the command was not written"
            time.sleep(0.005)
    assert await sent.reply() == b"charged"
    assert await sent.reply() == b"charged"  # read once, answered again


async def test_a_script_redis_does_not_hold_is_loaded_and_runs_once(
    private: tuple[RedisClient, ScriptPipe, PrivateRedis],
) -> None:
    client, pipe, private_redis = private
    script = client.register_script(ECHO)
    sent = await send_script(client, script, ["n"], ["first"], pipe)
    assert await sent.reply() == [b"first", 1]  # NOSCRIPT, then loaded through the pipe and sent again
    sent = await send_script(client, script, ["n"], ["second"], pipe)
    assert await sent.reply() == [b"second", 2]


async def test_after_a_redis_restart_the_script_goes_out_again_on_a_new_connection(
    private: tuple[RedisClient, ScriptPipe, PrivateRedis],
) -> None:
    client, pipe, private_redis = private
    script = client.register_script(ECHO)
    assert await (await send_script(client, script, ["n"], ["warm"], pipe)).reply() == [b"warm", 1]
    private_redis.restart()  # the pipe's connection is dead, and the new server has no script
    assert await (await send_script(client, script, ["n"], ["after"], pipe)).reply() == [b"after", 1]
    assert await (await send_script(client, script, ["n"], ["again"], pipe)).reply() == [b"again", 2]


async def test_a_reply_that_never_comes_is_sent_once_more_then_fails(
    private: tuple[RedisClient, ScriptPipe, PrivateRedis],
) -> None:
    client, pipe, private_redis = private
    assert private_redis.process is not None
    pipe.reply_timeout = 0.3
    script = client.register_script(ECHO)
    assert await (await send_script(client, script, ["n"], ["warm"], pipe)).reply() == [b"warm", 1]
    os.kill(private_redis.process.pid, signal.SIGSTOP)
    try:
        sent = await send_script(client, script, ["n"], ["stuck"], pipe)
        started = time.monotonic()
        with pytest.raises(StoreError, match="TimeoutError"):
            await sent.reply()  # once on the first connection, once more on a fresh one
        assert time.monotonic() - started < 2
    finally:
        os.kill(private_redis.process.pid, signal.SIGCONT)
    # a fresh connection: a stuck command's late reply cannot be taken for this one's
    reply = await (await send_script(client, script, ["n"], ["next"], pipe)).reply()
    assert reply[0] == b"next" and reply[1] >= 2


async def test_a_short_stall_is_ridden_out(private: tuple[RedisClient, ScriptPipe, PrivateRedis]) -> None:
    client, pipe, private_redis = private
    assert private_redis.process is not None
    pipe.reply_timeout = 0.5
    script = client.register_script(ECHO)
    assert await (await send_script(client, script, ["n"], ["warm"], pipe)).reply() == [b"warm", 1]
    first = pipe._proto
    os.kill(private_redis.process.pid, signal.SIGSTOP)
    sent = await send_script(client, script, ["n"], ["during"], pipe)
    reading = asyncio.create_task(sent.reply())
    # the first wait gives up at 0.5 s; the second, on a fresh connection, gets the reply
    await asyncio.sleep(0.7)
    os.kill(private_redis.process.pid, signal.SIGCONT)
    reply = await reading
    assert reply[0] == b"during"
    assert pipe._proto is not None and pipe._proto is not first  # it was sent once more


async def test_a_dropped_connection_sends_every_waiting_command_again_on_one_new_one(
    shared: tuple[RedisClient, ScriptPipe, str],
) -> None:
    client, pipe, prefix = shared
    script = client.register_script(ECHO)
    await client.script_load(ECHO)
    counter = f"{prefix}:n"
    sent = [await send_script(client, script, [counter], [f"c{i}"], pipe) for i in range(300)]
    pipe.reset()  # every command above is now waiting on a dead connection
    replies = await asyncio.gather(*(s.reply() for s in sent))
    assert [r[0] for r in replies] == [f"c{i}".encode() for i in range(300)]
    # each ran once or twice (before the drop, and again): never lost, never misassigned
    assert 300 <= int(await client.get(counter) or 0) <= 600


async def test_a_reader_that_gives_up_leaves_the_others_in_step(shared: tuple[RedisClient, ScriptPipe, str]) -> None:
    client, pipe, prefix = shared
    script = client.register_script(ECHO)
    await client.script_load(ECHO)
    counter = f"{prefix}:n"

    async def one(i: int) -> list[bytes | int]:
        reply: list[bytes | int] = await (await send_script(client, script, [counter], [f"c{i}"], pipe)).reply()
        return reply

    assert (await one(-1))[1] == 1  # connected: each task below writes at once, then waits
    tasks = [asyncio.create_task(one(i)) for i in range(300)]
    await asyncio.sleep(0)
    for task in tasks[::2]:  # every other one gives up while its reply is on its way
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for i, result in enumerate(results):
        if not isinstance(result, BaseException):
            assert result[0] == f"c{i}".encode()
    assert any(not isinstance(r, BaseException) for r in results)
    assert sum(isinstance(r, asyncio.CancelledError) for r in results) == 150
    assert await (await send_script(client, script, [counter], ["after"], pipe)).reply() == [b"after", 302]


async def test_a_pipe_closed_while_it_opens_stays_closed(shared: tuple[RedisClient, ScriptPipe, str]) -> None:
    client, pipe, prefix = shared
    script = client.register_script(ECHO)
    opening = asyncio.create_task(pipe.send(b"*1\r\n$4\r\nPING\r\n"))
    await asyncio.sleep(0)  # the connection is being opened
    await pipe.close()
    with pytest.raises(ConnectionError):
        await opening
    assert pipe._proto is None
    sent = await send_script(client, script, [f"{prefix}:n"], ["after-close"], pipe)  # through redis-py
    assert await sent.reply() == [b"after-close", 1]


async def test_a_closed_pipe_takes_no_more_commands(shared: tuple[RedisClient, ScriptPipe, str]) -> None:
    client, pipe, prefix = shared
    script = client.register_script(ECHO)
    await pipe.close()
    # it cannot open any more: the call runs through the client before send_script returns
    sent = await send_script(client, script, [f"{prefix}:n"], ["closed"], pipe)
    assert await client.get(f"{prefix}:n") == b"1"
    assert await sent.reply() == [b"closed", 1]


async def test_password_and_database_come_from_the_client(tmp_path: Path) -> None:
    server = PrivateRedis(tmp_path, password="s3cret-pipe")
    server.start()
    try:
        url = server.url.replace("/0", "/3")
        client = connect(url)
        pipe = ScriptPipe.of(client)
        assert pipe is not None
        assert "s3cret" not in repr(pipe)
        script = client.register_script(SET)
        await script(keys=["warm"], args=["x"])
        assert await (await send_script(client, script, ["k"], ["in-db-3"], pipe)).reply() == b"in-db-3"
        with redis.Redis(port=server.port, password="s3cret-pipe", db=3) as db3:
            assert db3.get("k") == b"in-db-3"
        with redis.Redis(port=server.port, password="s3cret-pipe", db=0) as db0:
            assert db0.get("k") is None
        await pipe.close()
        await client.aclose()

        wrong = ScriptPipe(port=server.port, password="wrong")
        with pytest.raises(ConnectionError, match="set-up"):
            await wrong.send(b"*1\r\n$4\r\nPING\r\n")
    finally:
        server.kill()


def test_no_pipe_for_a_cluster_or_tls() -> None:
    assert ScriptPipe.of(connect("redis+cluster://127.0.0.1:7000")) is None
    assert ScriptPipe.of(connect("rediss://127.0.0.1:6380/0")) is None
    assert ScriptPipe.of(connect("unix:///tmp/redis.sock?db=2")) is not None


async def test_without_a_pipe_the_script_has_run_when_it_returns(shared: tuple[RedisClient, ScriptPipe, str]) -> None:
    client, _, prefix = shared
    script = client.register_script(SET)
    sent = await send_script(client, script, [f"{prefix}:direct"], ["done"])
    with redis.Redis.from_url(REDIS_URL) as other:
        assert other.get(f"{prefix}:direct") == b"done"
    assert await sent.reply() == b"done"


async def test_written_gives_one_outcome() -> None:
    reads = 0

    async def read() -> int:
        nonlocal reads
        reads += 1
        return 7

    written = Written(read)
    assert await written.reply() == 7 and await written.reply() == 7 and reads == 1
    failed: Written[int] = Written.failed(StoreError("down"))
    for _ in range(2):
        with pytest.raises(StoreError, match="down"):
            await failed.reply()
    assert await Written.done("x").reply() == "x"


async def test_pipes_to_one_server_share_one_connection_until_the_last_closes() -> None:
    first, second = connect(REDIS_URL), connect(REDIS_URL)
    a, b = ScriptPipe.of(first), ScriptPipe.of(second)
    assert a is not None and b is not None and a is not b
    prefix = f"pipe-test:{run_token()}"
    script = first.register_script(ECHO)
    try:
        assert await (await send_script(first, script, [f"{prefix}:n"], ["a"], a)).reply() == [b"a", 1]
        assert await (await send_script(second, script, [f"{prefix}:n"], ["b"], b)).reply() == [b"b", 2]
        assert a._proto is not None and a._proto is b._proto  # one connection
        await a.close()
        assert await (await send_script(second, script, [f"{prefix}:n"], ["b"], b)).reply() == [b"b", 3]
        proto = b._proto
        await b.close()
        assert b._proto is None and proto is not None and proto.lost  # the last one closed it
    finally:
        await first.delete(f"{prefix}:n")
        await first.aclose()
        await second.aclose()


async def test_commands_written_together_leave_when_the_block_ends(
    shared: tuple[RedisClient, ScriptPipe, str],
) -> None:
    client, pipe, prefix = shared
    other_client = connect(REDIS_URL)
    other_pipe = ScriptPipe.of(other_client)  # another store's pipe: the same connection
    script = client.register_script(SET)
    await script(keys=[f"{prefix}:warm"], args=["x"])
    try:
        async with written_together():
            one = await send_script(client, script, [f"{prefix}:one"], ["1"], pipe)
            two = await send_script(other_client, script, [f"{prefix}:two"], ["2"], other_pipe)
            with redis.Redis.from_url(REDIS_URL) as other:  # neither has left yet
                assert other.get(f"{prefix}:one") is None and other.get(f"{prefix}:two") is None
        with redis.Redis.from_url(REDIS_URL) as other:  # both have, before any reply is read
            deadline = time.monotonic() + 5
            while other.get(f"{prefix}:two") != b"2":
                assert time.monotonic() < deadline, "the commands were not written"
                time.sleep(0.005)
            assert other.get(f"{prefix}:one") == b"1"
        assert (await one.reply(), await two.reply()) == (b"1", b"2")
    finally:
        assert other_pipe is not None
        await other_pipe.close()
        await other_client.aclose()


async def test_a_connection_lost_before_the_block_ends_sends_its_commands_once_on_a_new_one(
    shared: tuple[RedisClient, ScriptPipe, str],
) -> None:
    client, pipe, prefix = shared
    script = client.register_script(ECHO)
    await client.script_load(ECHO)
    async with written_together():
        sent = await send_script(client, script, [f"{prefix}:n"], ["again"], pipe)
        pipe.reset()  # lost before the block wrote it
    assert await sent.reply() == [b"again", 1]  # sent once, on a new connection
    assert await client.get(f"{prefix}:n") == b"1"


async def test_commands_that_cannot_be_written_together_fail_the_block_and_their_replies(
    shared: tuple[RedisClient, ScriptPipe, str],
) -> None:
    client, pipe, prefix = shared
    script = client.register_script(ECHO)
    await client.script_load(ECHO)
    with pytest.raises(PipeBroken):
        async with written_together():
            sent = await send_script(client, script, [f"{prefix}:n"], ["never"], pipe)
            await pipe.close()  # its only holder: the connection is gone for good
    with pytest.raises(StoreError):
        await sent.reply()
    assert await client.get(f"{prefix}:n") is None


async def test_pipes_asked_for_in_different_event_loops_do_not_share() -> None:
    first = connect(REDIS_URL)
    here = ScriptPipe.of(first)
    assert here is not None

    def elsewhere() -> object:
        async def ask() -> object:
            second = connect(REDIS_URL)
            pipe = ScriptPipe.of(second)
            assert pipe is not None
            conn = pipe._conn
            await pipe.close()
            await second.aclose()
            return conn

        return asyncio.run(ask())

    try:
        assert await asyncio.to_thread(elsewhere) is not here._conn
    finally:
        await here.close()
        await first.aclose()
