"""Limits on what one client may hold: a request head and body must arrive in time, and only so
many connections are served at once.

uvicorn closes idle keep-alive connections and can refuse connections beyond a limit, but it
does not bound how long a client takes to send a request: a slow-loris client that sends half a
request head, or its body a byte at a time, holds a connection (and a task) for as long as it
likes. The HTTP protocols here close a connection whose request head is late, `BodyTimeout`
answers 408 to a late body, and `uvicorn_options` applies a `ServerSettings` to a uvicorn server.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal

import h11
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from payrouter.settings import ServerSettings

__all__ = ["BodyTimeout", "H11HeadTimeout", "HttpToolsHeadTimeout", "head_timeout_protocol", "uvicorn_options"]

_REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class _HeadDeadline:
    """The request-head timer, mixed in before a uvicorn HTTP protocol.

    Armed when a connection opens (so an idle connection that never sends a request is closed
    too) and when the first byte of a later request arrives; disarmed when the head is complete.
    Between requests uvicorn's own keep-alive timer bounds the idle time.
    """

    header_timeout: float = 10.0
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    _head_timer: asyncio.TimerHandle | None = None
    _head_started = False  # part of a request head has arrived

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._head_started = False

    def _response_in_flight(self) -> bool:
        raise NotImplementedError

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        # A 408 only where it cannot land inside another response (HTTP pipelining).
        if self._head_started and not self._response_in_flight():
            self.transport.write(_REQUEST_TIMEOUT)
        self.transport.close()


class _OneWrite:
    """A response cycle's view of its connection: the response head is held back until the
    first body bytes (or the event loop's next turn) and leaves with them in one write.

    uvicorn writes a head and its body separately: two send syscalls and two segments, so
    the client is woken for the head and again for the body. A whole response (every
    non-streamed answer) then costs one of each. A held head never waits past the current turn.
    """

    __slots__ = ("_held", "_loop", "_transport", "_written")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._written = False

    def write(self, data: bytes) -> None:
        if self._held is not None:
            data, self._held = self._held + data, None
        elif not self._written and not data.startswith(b"HTTP/1.1 100 "):
            self._written = True
            self._held = data
            self._loop.call_soon(self._flush)
            return
        self._transport.write(data)

    def _flush(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()


class HttpToolsHeadTimeout(_HeadDeadline, HttpToolsProtocol):
    """uvicorn's httptools protocol (the fast C parser) with a request-head timeout, writing
    each response's head and first body bytes in one write (`_OneWrite`)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_started = True
        self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._disarm_head_timer()
        super().on_headers_complete()
        # the cycle uvicorn just made for this request (it only writes, closes and asks
        # whether the connection is closing)
        if self.cycle is not None:
            self.cycle.transport = _OneWrite(self.transport, self.loop)  # type: ignore[assignment]

    def _response_in_flight(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete


class H11HeadTimeout(_HeadDeadline, H11Protocol):
    """uvicorn's pure-Python h11 protocol with a request-head timeout (for ``parser="h11"``)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # h11 has no "message begin" event: the client is between requests (IDLE) with bytes of
        # the next head buffered, or it has moved on past the head.
        if self.conn.their_state is h11.IDLE:
            if self.conn.trailing_data[0]:
                self._head_started = True
                self._arm_head_timer()
        else:
            self._disarm_head_timer()

    def _response_in_flight(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete


def head_timeout_protocol(
    seconds: float, parser: Literal["httptools", "h11"] = "httptools"
) -> type[HttpToolsHeadTimeout | H11HeadTimeout]:
    """A uvicorn HTTP protocol class (``uvicorn.Config(http=...)``) that closes a connection whose
    request head is not complete ``seconds`` after the connection opened or the request began.

    A partly received head is answered ``408 Request Timeout`` before the connection closes.
    """
    base = HttpToolsHeadTimeout if parser == "httptools" else H11HeadTimeout
    return type(base.__name__, (base,), {"header_timeout": seconds})


def uvicorn_options(server: ServerSettings) -> dict[str, Any]:
    """The ``uvicorn.Config`` / ``uvicorn.run`` keyword arguments that enforce ``server``'s limits
    (the body timeout is `BodyTimeout`, in the app)."""
    return {
        "http": head_timeout_protocol(server.header_timeout),
        "timeout_keep_alive": server.keep_alive_timeout,
        # uvicorn refuses a request once ``connections >= limit``, the asking connection
        # included: N + 1 serves N connections at once.
        "limit_concurrency": server.max_concurrency + 1,
    }


class _BodyLate(Exception):
    pass


class BodyTimeout:
    """ASGI middleware: a request's whole body must arrive within ``seconds`` of its head.

    A late body is answered 408 with an OpenAI-shaped JSON error and ``connection: close``
    (or, if a response has already started, the connection is dropped). Once the body is in,
    waiting on ``receive`` (for the client's disconnect, during a stream) is not bounded.
    """

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # asyncio's own timeout: anyio's cancel scope costs several times more, on every request
        deadline = asyncio.get_running_loop().time() + self.seconds
        body_done = False
        started = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise _BodyLate from None
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, timed_receive, watched_send)
        except _BodyLate:
            if started:
                raise
            error = {
                "message": f"the request body did not arrive within {self.seconds:g} s",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
            body = json.dumps({"error": error}).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ]
            await send({"type": "http.response.start", "status": 408, "headers": headers})
            await send({"type": "http.response.body", "body": body})
