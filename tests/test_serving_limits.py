"""Slow clients are cut off: late request heads, late bodies, and connections beyond the limit.

Real uvicorn servers on loopback ports, driven by raw sockets; `payrouter serve` itself, run as a
subprocess from a config file, for the wiring.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Literal, TypeVar

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from payrouter.sandbox.dev import EXAMPLE_TABLE
from payrouter.sandbox.serving import serve_in_thread
from payrouter.serving_limits import BodyTimeout, _OneWrite, head_timeout_protocol, uvicorn_options
from payrouter.settings import ServerSettings

CLI = Path(sys.executable).parent / "payrouter"
T = TypeVar("T")


def _wait_for(condition: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll ``condition`` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.005)


class Reader:
    """A Starlette app that reads request bodies through ``receive``, as the payment gate does."""

    def __init__(self, body_timeout: float) -> None:
        self.reading = 0
        self._lock = threading.Lock()
        self.app = Starlette(
            routes=[Route("/upload", self.upload, methods=["POST"]), Route("/ping", self.ping)],
            middleware=[Middleware(BodyTimeout, seconds=body_timeout)],
        )

    async def upload(self, request: Request) -> Response:
        with self._lock:
            self.reading += 1
        try:
            body = await request.body()
        except ClientDisconnect:
            return Response(status_code=499)
        return JSONResponse({"bytes": len(body)})

    async def ping(self, request: Request) -> Response:
        return JSONResponse({"ok": True})


@contextmanager
def served(limits: ServerSettings, parser: Literal["httptools", "h11"] = "httptools") -> Iterator[tuple[Reader, int]]:
    reader = Reader(limits.body_timeout)
    options = uvicorn_options(limits) | {"http": head_timeout_protocol(limits.header_timeout, parser)}
    with serve_in_thread(reader.app, **options) as url:
        yield reader, int(url.rsplit(":", 1)[1])


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def _until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (which it must, in time)."""
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"the server kept the connection open for {timeout} s; got {data!r}") from None
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def _response(sock: socket.socket) -> tuple[int, bytes]:
    """One whole response (status, body) from a keep-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split()[1]), body


GET_PING = b"GET /ping HTTP/1.1\r\nHost: t\r\n\r\n"
HALF_HEAD = b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Le"


@pytest.mark.parametrize("parser", ["httptools", "h11"])
@pytest.mark.parametrize("sent", [b"", HALF_HEAD], ids=["idle", "half-head"])
def test_a_new_connection_without_a_whole_head_is_closed_after_the_header_timeout(
    parser: Literal["httptools", "h11"], sent: bytes
) -> None:
    with served(ServerSettings(header_timeout=0.5), parser) as (_, port), _connect(port) as sock:
        start = time.monotonic()
        sock.sendall(sent)
        reply = _until_closed(sock, 3)
        elapsed = time.monotonic() - start
    assert 0.4 <= elapsed < 1.5
    assert reply == (b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n" if sent else b"")


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_on_a_keep_alive_connection_the_head_timer_starts_with_the_next_request(
    parser: Literal["httptools", "h11"],
) -> None:
    limits = ServerSettings(header_timeout=0.5, keep_alive_timeout=5)
    with served(limits, parser) as (_, port), _connect(port) as sock:
        sock.sendall(GET_PING[:20])
        time.sleep(0.2)  # a slow head that still arrives in time
        sock.sendall(GET_PING[20:])
        assert _response(sock)[0] == 200
        time.sleep(0.7)  # idle for longer than header_timeout: the keep-alive timeout governs this
        sock.sendall(GET_PING)
        assert _response(sock)[0] == 200
        sock.sendall(HALF_HEAD)
        start = time.monotonic()
        reply = _until_closed(sock, 3)
        elapsed = time.monotonic() - start
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert 0.4 <= elapsed < 1.5


def test_a_body_dribbled_past_the_body_timeout_gets_a_408() -> None:
    with served(ServerSettings(body_timeout=0.5)) as (_, port), _connect(port) as sock:
        sock.sendall(
            b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        )
        start = time.monotonic()
        # a byte every 50 ms, until the server answers: never idle for long, but far too slow
        while not select.select([sock], [], [], 0.05)[0] and time.monotonic() - start < 3:
            sock.sendall(b" ")
        reply = _until_closed(sock, 1)
        elapsed = time.monotonic() - start
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ") and b"connection: close" in head.lower()
    assert json.loads(body)["error"]["message"] == "the request body did not arrive within 0.5 s"
    assert 0.4 <= elapsed < 1.5


def test_requests_beyond_max_concurrency_get_a_quick_503() -> None:
    limits = ServerSettings(max_concurrency=3, body_timeout=5)
    slow_head = b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{"
    with served(limits) as (reader, port), ExitStack() as stack:

        def hold_one_more() -> None:
            held = reader.reading + 1  # counted before sending: the server may read it at once
            stack.enter_context(_connect(port)).sendall(slow_head)
            _wait_for(lambda: reader.reading >= held, 5, "the server reads the slow request")

        for _ in range(limits.max_concurrency - 1):
            hold_one_more()
        with _connect(port) as sock:  # the N-th connection is still served
            sock.sendall(GET_PING)
            assert _response(sock)[0] == 200
        hold_one_more()
        extra = [stack.enter_context(_connect(port)) for _ in range(3)]
        start = time.monotonic()
        for sock in extra:
            sock.sendall(GET_PING)
        replies = [_until_closed(sock, 1) for sock in extra]
        assert time.monotonic() - start < 1
        assert all(r.startswith(b"HTTP/1.1 503 ") for r in replies), replies


# --- `payrouter serve`, from a config file ---------------------------------------------------


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """``payrouter serve`` with tight limits; yields its port."""
    tmp = tmp_path_factory.mktemp("serve")
    kinds = {"kinds": [{"x402Version": 2, "scheme": "exact", "network": "eip155:8453"}]}

    async def supported(request: Request) -> Response:
        return JSONResponse(kinds)

    facilitator = Starlette(routes=[Route("/supported", supported)])
    with serve_in_thread(facilitator) as facilitator_url:
        providers = "".join(
            f'[providers.{name}]\nbase_url = "http://127.0.0.1:9/v1"\n' for name in ("openai", "anthropic", "together")
        )
        (tmp / "payrouter.toml").write_text(
            f'price_table = "{EXAMPLE_TABLE}"\nreconcile_interval = 0\n'
            f'[facilitator]\nmode = "remote"\nurl = "{facilitator_url}"\nrpc_url = "http://127.0.0.1:9"\n'
            "[server]\nheader_timeout = 0.5\nbody_timeout = 1.0\nkeep_alive_timeout = 5\nmax_concurrency = 1\n"
            + providers
        )
        log = tmp / "serve.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [str(CLI), "serve", "--config", str(tmp / "payrouter.toml"), "--port", "0"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        try:

            def port() -> int | None:
                assert process.poll() is None, log.read_text()
                found = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", log.read_text())
                return int(found.group(1)) if found else None

            yield _wait_for(port, 30, "payrouter serve starts")
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def test_serve_closes_a_half_sent_head_after_its_header_timeout(serve: int) -> None:
    with _connect(serve) as sock:
        start = time.monotonic()
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Le")
        reply = _until_closed(sock, 3)
        elapsed = time.monotonic() - start
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert 0.4 <= elapsed < 1.5


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
def test_serve_answers_a_late_paid_request_body_with_a_408(serve: int, path: str) -> None:
    with _connect(serve) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 500\r\n\r\n{{".encode())
        start = time.monotonic()
        reply = _until_closed(sock, 3)
        elapsed = time.monotonic() - start
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    error = json.loads(body)  # each surface answers in its own shape
    assert error["error"]["type"] == "invalid_request_error"
    assert error.get("type") == ("error" if path == "/v1/messages" else None)
    assert 0.9 <= elapsed < 2


def test_serve_refuses_connections_beyond_max_concurrency(serve: int) -> None:
    with _connect(serve) as held:
        held.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 500\r\n\r\n{")
        # the held request counts once the server has taken it up: until then an extra one may
        # still be served, after that every extra one is refused at once
        deadline = time.monotonic() + 3
        while True:
            with _connect(serve) as extra:
                start = time.monotonic()
                extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                reply = _until_closed(extra, 1)
            if reply.startswith(b"HTTP/1.1 503 "):
                assert time.monotonic() - start < 0.5
                return
            assert time.monotonic() < deadline, reply
            time.sleep(0.02)


class _Wire:
    """Stands in for a connection's asyncio transport: records what is written."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def test_a_response_head_and_its_body_leave_in_one_write() -> None:
    loop = asyncio.new_event_loop()
    try:
        wire = _Wire()
        out = _OneWrite(wire, loop)  # type: ignore[arg-type]
        out.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        assert wire.writes == []  # held for its body
        out.write(b"ok")
        assert wire.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]
        out.write(b"more")  # later body bytes (a stream) go at once
        assert wire.writes[-1] == b"more"

        alone = _Wire()
        out = _OneWrite(alone, loop)  # type: ignore[arg-type]
        out.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        loop.run_until_complete(asyncio.sleep(0))  # a head whose body is not ready leaves on the next turn
        assert alone.writes == [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"]

        closing = _Wire()
        out = _OneWrite(closing, loop)  # type: ignore[arg-type]
        out.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # an interim answer is never held
        out.write(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
        out.close()  # a held head is written before the connection closes
        assert closing.writes == [b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 408 Request Timeout\r\n\r\n"]
        assert closing.closed
    finally:
        loop.close()


def test_responses_through_the_protocol_arrive_whole_in_order_and_streamed() -> None:
    async def stream(request: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(3):
                await asyncio.sleep(0.01)
                yield f"data: {i}\n\n".encode()

        return StreamingResponse(chunks(), media_type="text/event-stream")

    async def echo(request: Request) -> Response:
        return JSONResponse({"bytes": len(await request.body())})

    app = Starlette(routes=[Route("/stream", stream), Route("/echo", echo, methods=["POST"])])
    with serve_in_thread(app, **uvicorn_options(ServerSettings())) as url, _connect(int(url.rsplit(":", 1)[1])) as sock:
        for i in range(3):  # keep-alive: each answer whole, in order
            body = b"x" * (i * 1000)
            sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            assert _response(sock) == (200, b'{"bytes":%d}' % len(body))
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(b"hello")
        assert _response(sock) == (200, b'{"bytes":5}')
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
        data = b""
        while not data.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            assert chunk
            data += chunk
        assert [line.strip() for line in data.split(b"\r\n") if line.startswith(b"data:")] == [
            b"data: 0",
            b"data: 1",
            b"data: 2",
        ]
