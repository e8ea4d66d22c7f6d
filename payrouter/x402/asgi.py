"""Small ASGI helpers shared by the payment gate and its streaming settlement."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from payrouter.http_errors import error_bytes

__all__ = ["Endpoint", "json_error", "replay_body", "run_handler", "send_response"]

# a paid path's own endpoint (`payrouter.routes.chat`), as the router would call it
Endpoint = Callable[[Request], Awaitable[Response]]

log = logging.getLogger("payrouter.gate")


def json_error(status: int, message: str, kind: str, param: str | None = None) -> tuple[int, bytes]:
    """``(status, body)`` of the error response (`payrouter.http_errors`)."""
    return status, error_bytes(message, kind, param)


async def send_response(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Send a whole response (JSON by default) with its content length."""
    hdrs = list(headers or [(b"content-type", b"application/json")])
    hdrs.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body})


def replay_body(receive: Receive, body: bytes) -> Receive:
    """A ``receive`` that first yields the already-read ``body``, then defers to ``receive``."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def run_handler(
    app: ASGIApp, scope: Scope, receive: Receive, body: bytes, endpoint: Endpoint | None = None
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Run the paid handler with the already-read ``body``; capture its whole response (a
    handler that raises is a 500 that charges nothing). Its headers come back without
    ``content-length``: whoever sends the answer sets it (`send_response`).

    With ``endpoint`` (the path's own endpoint) the handler is called directly: no router,
    no exception middleware, no ASGI messages for a whole answer (~40 us of a paid call);
    ``app`` (the rest of the ASGI stack) runs it otherwise.
    """
    status = 500
    headers: list[tuple[bytes, bytes]] = []
    chunks: list[bytes] = []

    async def capture(message: Message) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status = message["status"]
            headers = [h for h in message.get("headers", []) if h[0].lower() != b"content-length"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    replayed = replay_body(receive, body)
    try:
        if endpoint is None:
            await app(scope, replayed, capture)
        else:
            response = await endpoint(Request(scope, replayed))
            whole = getattr(response, "body", None)
            if isinstance(whole, bytes) and response.background is None:
                kept = [h for h in response.raw_headers if h[0] != b"content-length"]
                return response.status_code, kept, whole
            await response(scope, replayed, capture)  # a stream, or work to run after it
    except Exception:
        log.exception("handler failed")
        _, err = json_error(500, "internal error while serving a paid request; nothing was charged", "server_error")
        return 500, [(b"content-type", b"application/json")], err
    return status, headers, b"".join(chunks)
