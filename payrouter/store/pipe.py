"""One pipelined connection for the paid path's scripts on a standalone Redis.

redis-py's asyncio client takes a pooled connection per command, packs it in Python, arms a
timeout task for the write and one for the read, and records observability events: about 100 us
of CPU per command on this path, which makes three per paid call. Redis answers a connection's
commands in the order it received them, so one connection can carry every request's commands
at once: each command is written as it comes, and each reply resolves the oldest waiting one.
That is this module (about 30 us a command), used only for `EVALSHA` of scripts whose callers
fall back to redis-py on any connection trouble (`payrouter.store.redis.send_script`).

Only what that needs is here: TCP or a Unix socket, ``AUTH`` and ``SELECT`` from the client's
settings, RESP2 parsed by hiredis. A TLS or Cluster client gets no pipe (`ScriptPipe.of` is
None) and keeps redis-py's path.

Pipes to one server asked for in one event loop share its connection (the channel store's and
the journal's: `written_together` then sends a charge and its record in one write). A reply
that does not come in time drops the connection for every holder, whose commands are sent
again: every command sent through a pipe must be a script that tolerates running twice.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import threading
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any, cast

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import Connection, UnixDomainSocketConnection

__all__ = ["PipeBroken", "ReplyError", "ScriptPipe", "pack", "written_together"]

ReplyError = hiredis.ReplyError


class PipeBroken(ConnectionError):
    """The pipe's connection failed or closed before the reply came: the command may or may
    not have run."""


def pack(*args: bytes | str | int) -> bytes:
    """One command in RESP, packed by hiredis in C (a journal record's ~90 arguments: 9 us,
    against 30 us in Python and ~50 us in redis-py's packer)."""
    packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]  # its stub says a 1-tuple
    return packed


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.drained = asyncio.Event()
        self.drained.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        # pause on any byte the kernel did not take: a command is written once it has it all
        self.transport.set_write_buffer_limits(high=0, low=0)

    def pause_writing(self) -> None:
        self.drained.clear()

    def resume_writing(self) -> None:
        self.drained.set()

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            if not self.waiting:  # a reply nobody asked for: the stream is out of step
                self.fail(PipeBroken("redis sent a reply nobody waited for"))
                return
            waiter = self.waiting.popleft()
            if not waiter.done():  # a reader that gave up (cancelled) still had its reply
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(PipeBroken(f"redis connection lost ({exc or 'closed'})"))

    def fail(self, error: Exception) -> None:
        self.lost = True
        self.drained.set()
        if self.transport is not None:
            self.transport.abort()
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_exception(error)


class _Connection:
    """The connection every `ScriptPipe` to one server (same address, credentials and database)
    shares, opened on first use; closed when its last pipe closes."""

    def __init__(self, address: tuple[str, int, str | None], hello: list[bytes], connect_timeout: float) -> None:
        self.address = address
        self.hello = hello
        self.connect_timeout = connect_timeout
        self.proto: _Protocol | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.opening: asyncio.Task[_Protocol] | None = None
        self.closed = False
        self.holders = 0
        self.key: tuple[Any, ...] | None = None  # its entry in `_SHARED`, if any

    async def current(self) -> _Protocol:
        """The open connection (opened now if it is not)."""
        if self.closed:
            raise PipeBroken("the pipe is closed")
        proto = self.proto
        if proto is None or proto.lost or self.loop is not asyncio.get_running_loop():
            proto = await self._open()
            if proto.lost:
                raise PipeBroken("the connection was lost as it opened")
        return proto

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        if self.loop is not loop:  # a client used from another event loop (tests) starts afresh
            if self.proto is not None:
                with contextlib.suppress(Exception):  # its loop may be closed already
                    self.proto.fail(PipeBroken("the connection belonged to another event loop"))
            self.loop, self.proto, self.opening = loop, None, None
        if self.opening is None or self.opening.done():
            # its own context: a `written_together` block it was started in is not its own
            self.opening = loop.create_task(self._connect(loop), context=contextvars.Context())
            # every caller may have given up: its failure is still retrieved (no stray log)
            self.opening.add_done_callback(lambda task: task.cancelled() or task.exception())
        # one attempt shared by every caller; a caller that gives up does not cancel it
        return await asyncio.shield(self.opening)

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _Protocol:
        host, port, path = self.address
        proto: _Protocol | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                if path is not None:
                    _, proto = await loop.create_unix_connection(_Protocol, path)
                else:
                    _, proto = await loop.create_connection(_Protocol, host, port)
                if self.hello:
                    replies = [_queue(proto) for _ in self.hello]
                    assert proto.transport is not None
                    proto.transport.write(b"".join(self.hello))
                    for answer in await asyncio.gather(*replies, return_exceptions=True):
                        if isinstance(answer, ReplyError):  # a reply (hiredis's error value), not raised
                            raise PipeBroken(f"redis refused the connection's set-up: {answer}")
                        if isinstance(answer, BaseException):
                            raise answer
        except BaseException:
            if proto is not None:
                proto.fail(PipeBroken("the connection's set-up failed"))
            raise
        if self.closed:  # closed while it opened
            proto.fail(PipeBroken("the pipe is closed"))
            raise PipeBroken("the pipe is closed")
        self.proto = proto
        return proto

    def reset(self) -> None:
        if self.proto is not None:
            self.proto.fail(PipeBroken("the connection was reset"))
            self.proto = None

    def close(self) -> None:
        self.closed = True
        self.reset()
        if self.key is not None and _SHARED.get(self.key) is self:
            del _SHARED[self.key]


# the connections `ScriptPipe.of` hands out, by server, credentials, database, connect timeout and
# the event loop (or thread) they were asked for in: a connection serves one loop
_SHARED: weakref.WeakValueDictionary[tuple[Any, ...], _Connection] = weakref.WeakValueDictionary()


def _asker() -> tuple[str, int]:
    try:
        return ("loop", id(asyncio.get_running_loop()))
    except RuntimeError:
        return ("thread", threading.get_ident())


def _queue(proto: _Protocol) -> asyncio.Future[Any]:
    waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    proto.waiting.append(waiter)
    return waiter


class ScriptPipe:
    """A pipelined connection that many callers write commands to at once (opened on first use).

    Pipes from `of` to the same server share one connection: the channel store and the
    journal then write a paid call's charge and its record together (`written_together`).

    Args:
        host, port or path: where Redis listens (TCP, or a Unix socket path).
        username, password, db: sent as ``AUTH`` and ``SELECT`` when the connection opens.
        connect_timeout: seconds to open it (every caller waiting meanwhile shares the attempt).
        reply_timeout: seconds a reply may take before `reply` gives up on it and drops the
            connection it was sent on.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 6379,
        *,
        path: str | None = None,
        username: str | None = None,
        password: str | None = None,
        db: int = 0,
        connect_timeout: float = 5.0,
        reply_timeout: float = 5.0,
    ) -> None:
        self.reply_timeout = reply_timeout
        hello = []
        if password is not None:
            hello.append(pack(b"AUTH", *([username] if username else []), password))
        if db:
            hello.append(pack(b"SELECT", db))
        self._conn = _Connection((host, port, path), hello, connect_timeout)
        self._conn.holders = 1
        self._closed = False

    def __repr__(self) -> str:  # the AUTH command holds the password
        host, port, path = self._conn.address
        return f"ScriptPipe({path or f'{host}:{port}'})"

    @property
    def _proto(self) -> _Protocol | None:
        return self._conn.proto

    @classmethod
    def of(cls, client: Any) -> ScriptPipe | None:
        """A pipe to the Redis ``client`` talks to, or None when it is not a plain standalone
        client (a Cluster, TLS, or a connection class of its own). Pipes to the same server,
        with the same credentials and database, share one connection."""
        if not isinstance(client, Redis):
            return None
        pool = client.connection_pool
        kwargs = pool.connection_kwargs
        connection_class = pool.connection_class
        username, password = kwargs.get("username"), kwargs.get("password")
        db = int(kwargs.get("db") or 0)
        connect_timeout = float(kwargs.get("socket_connect_timeout") or 5.0)
        reply_timeout = float(kwargs.get("socket_timeout") or 5.0)
        if connection_class is Connection:
            address: dict[str, Any] = {
                "host": str(kwargs.get("host", "127.0.0.1")),
                "port": int(kwargs.get("port", 6379)),
            }
        elif connection_class is UnixDomainSocketConnection:
            address = {"path": str(kwargs["path"])}
        else:
            return None
        pipe = cls(
            **address,
            username=username,
            password=password,
            db=db,
            connect_timeout=connect_timeout,
            reply_timeout=reply_timeout,
        )
        key = (tuple(sorted(address.items())), username, password, db, connect_timeout, _asker())
        shared = _SHARED.get(key)
        if shared is None or shared.closed:
            shared = _SHARED[key] = pipe._conn
            shared.key = key
        else:
            shared.holders += 1
        pipe._conn = shared
        return pipe

    async def send(self, command: bytes) -> asyncio.Future[Any]:
        """Write one packed command (`pack`) and return once the kernel has all of it (inside
        `written_together`: once the block ends); the future resolves to its reply (an error
        reply is a `ReplyError` value, not raised) or fails with `PipeBroken`. Read it with
        `reply`.

        Raises:
            PipeBroken, OSError, TimeoutError: the pipe is closed, or the connection could not
                be opened.
        """
        if self._closed:
            raise PipeBroken("the pipe is closed")
        proto = await self._conn.current()
        together = _TOGETHER.get()
        if together is not None:  # queued with its command when the block writes them
            waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            together.append((self._conn, command, waiter, self.reply_timeout))
            return waiter
        waiter = _queue(proto)
        assert proto.transport is not None
        proto.transport.write(command)
        if not proto.drained.is_set():  # the socket was full: the rest waits in our buffer
            await _drained(proto, self.reply_timeout)
        return waiter

    async def reply(self, waiter: asyncio.Future[Any]) -> Any:
        """The reply ``waiter`` (from `send`) resolves to.

        Raises:
            PipeBroken: the connection was lost before the reply came.
            TimeoutError: no reply within ``reply_timeout``; the connection it was sent on is
                dropped (its later replies could not be matched any more).
        """
        try:
            async with asyncio.timeout(self.reply_timeout):
                return await waiter
        except TimeoutError:
            proto = self._conn.proto
            if proto is not None and waiter in proto.waiting:
                proto.fail(PipeBroken("a reply did not come in time; the connection was dropped"))
            raise

    def reset(self) -> None:
        """Drop the connection (the next command opens a new one)."""
        self._conn.reset()

    async def close(self) -> None:
        """Close this pipe for good (the connection with it, once no other pipe shares it);
        commands waiting for replies on a closed connection fail with `PipeBroken`."""
        if self._closed:
            return
        self._closed = True
        self._conn.holders -= 1
        if self._conn.holders <= 0:
            self._conn.close()


async def _drained(proto: _Protocol, timeout: float) -> None:
    try:
        async with asyncio.timeout(timeout):
            await proto.drained.wait()
    except TimeoutError:
        proto.fail(PipeBroken("redis did not take a command in time; the connection was dropped"))
        raise PipeBroken("redis did not take the command in time") from None


_Queued = tuple[_Connection, bytes, "asyncio.Future[Any]", float]
_TOGETHER: ContextVar[list[_Queued] | None] = ContextVar("payrouter_pipe_together", default=None)


@asynccontextmanager
async def written_together() -> AsyncIterator[None]:
    """Commands sent through pipes in this block leave together when it ends: one write per
    connection (a paid call's charge and its journal record: one system call, one wake-up of
    Redis, instead of two). `ScriptPipe.send` in the block returns before its command is
    written; the block ends once all have left. A connection lost meanwhile is opened again
    for them.

    Raises:
        PipeBroken: some could not be written (no connection, or Redis took none of them in
            time); their futures fail with it, and `payrouter.store.redis.send_script`'s
            replies send them again. A caller that must know they left (before answering)
            reads their replies then. Run the block where it is not cancelled (shielded).
    """
    queued: list[_Queued] = []
    token = _TOGETHER.set(queued)
    try:
        yield
    finally:
        _TOGETHER.reset(token)
        failed = await _write_queued(queued)
    if failed:
        raise PipeBroken(f"{failed} command(s) could not be written together")


async def _write_queued(queued: list[_Queued]) -> int:
    """Write ``queued``, one write per connection; how many could not be written."""
    by_connection: dict[_Connection, list[_Queued]] = {}
    for entry in queued:
        by_connection.setdefault(entry[0], []).append(entry)
    failed = 0
    for conn, entries in by_connection.items():
        waiters = [waiter for _, _, waiter, _ in entries]
        try:
            proto = await conn.current()  # the one they were queued on, or a new one
            assert proto.transport is not None
            proto.waiting.extend(waiters)  # in the order of the bytes, with no await between
            proto.transport.write(b"".join(command for _, command, _, _ in entries))
            if not proto.drained.is_set():
                await _drained(proto, entries[0][3])  # fails the waiters if it raises
        except (OSError, TimeoutError) as exc:  # PipeBroken is an OSError
            failed += len(entries)
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(exc if isinstance(exc, PipeBroken) else PipeBroken(str(exc)))
    return failed
