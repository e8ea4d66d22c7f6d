"""Just enough HTTP/1.1 over asyncio streams for the fault proxy, both sides.

The proxy must be able to drop a connection without an answer, which an ASGI server cannot
do, and must not distort paid-path timings: a keep-alive round trip to anvil through
`KeepAliveClient` costs ~0.15 ms, through ``httpx.AsyncClient`` ~0.6 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["HttpError", "KeepAliveClient", "Message", "encode_response", "read_message"]

MAX_BODY = 16 * 1024 * 1024
_REASONS = {
    200: "OK",
    400: "Bad Request",
    405: "Method Not Allowed",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class HttpError(Exception):
    """The peer sent something this small HTTP/1.1 implementation does not accept."""


@dataclass(slots=True)
class Message:
    """A request or a response.

    Attributes:
        start: the request line ``(method, target, version)`` or the status line
            ``(version, status, reason)``.
        headers: lower-cased names.
        body: the whole body (chunked bodies are decoded).
        keep_alive: whether the connection stays open after this message.
    """

    start: tuple[str, str, str]
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


async def read_message(reader: asyncio.StreamReader, *, response: bool = False) -> Message | None:
    """Read one message; None on a clean end of the connection before it.

    Raises:
        HttpError: malformed or oversized.
        asyncio.IncompleteReadError, ConnectionError: the connection broke mid-message.
    """
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise HttpError("truncated message head") from None
        return None
    except asyncio.LimitOverrunError:
        raise HttpError("message head too large") from None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2:
        raise HttpError(f"bad start line {lines[0]!r}")
    start = (parts[0], parts[1], parts[2] if len(parts) > 2 else "")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    version = start[0] if response else start[2]
    connection = headers.get("connection", "").lower()
    keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    elif "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError:
            raise HttpError("bad Content-Length") from None
        if not 0 <= length <= MAX_BODY:
            raise HttpError("body too large")
        body = await reader.readexactly(length)
    elif response and start[1] not in ("204", "304"):
        body = await reader.read(MAX_BODY)  # delimited by the end of the connection
        keep_alive = False
    else:
        body = b""
    return Message(start, headers, body, keep_alive)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        try:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise HttpError("bad chunk size") from None
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return bytes(body)
        if len(body) + size > MAX_BODY:
            raise HttpError("body too large")
        body += await reader.readexactly(size)
        await reader.readexactly(2)


def encode_response(status: int, body: bytes, content_type: str, keep_alive: bool) -> bytes:
    """A complete HTTP/1.1 response with a Content-Length."""
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
    )
    if not keep_alive:
        head += "Connection: close\r\n"
    return (head + "\r\n").encode("latin-1") + body


_Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class KeepAliveClient:
    """POSTs to one URL over a pool of keep-alive HTTP/1.1 connections.

    Args:
        url: ``http://`` or ``https://`` URL.
        timeout: seconds for one whole exchange (connect, send, read the answer).
        max_idle: connections kept open between requests.
    """

    def __init__(self, url: str, timeout: float = 30.0, max_idle: int = 64) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._tls = parts.scheme == "https"
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._host_header = parts.netloc.rpartition("@")[2]
        self._timeout = timeout
        self._max_idle = max_idle
        self._idle: list[_Connection] = []

    async def post(self, body: bytes, content_type: str = "application/json") -> Message:
        """Send ``body`` and return the answer.

        Raises:
            TimeoutError: no complete answer within the timeout.
            OSError, asyncio.IncompleteReadError, HttpError: the connection or the answer broke.
        """
        request = (
            f"POST {self._target} HTTP/1.1\r\nHost: {self._host_header}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode("latin-1") + body
        connection = self._take()
        try:
            async with asyncio.timeout(self._timeout):
                if connection is None:
                    connection = await asyncio.open_connection(self._host, self._port, ssl=self._tls or None)
                reader, writer = connection
                writer.write(request)
                await writer.drain()
                answer = await read_message(reader, response=True)
        except BaseException:
            if connection is not None:
                connection[1].close()
            raise
        if answer is None:
            writer.close()
            raise asyncio.IncompleteReadError(b"", None)
        if answer.keep_alive and len(self._idle) < self._max_idle:
            self._idle.append(connection)
        else:
            writer.close()
        return answer

    def _take(self) -> _Connection | None:
        while self._idle:
            reader, writer = self._idle.pop()
            # the node closed it while idle: its EOF is already in the reader
            if not reader.at_eof() and not writer.is_closing():
                return reader, writer
            writer.close()
        return None

    async def aclose(self) -> None:
        """Close the idle connections."""
        idle, self._idle = self._idle, []
        for _reader, writer in idle:
            writer.close()
        for _reader, writer in idle:
            with contextlib.suppress(OSError):
                await writer.wait_closed()
