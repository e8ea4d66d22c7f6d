"""Small ASGI helpers shared by the payment gate and its streaming settlement."""

from __future__ import annotations

from starlette.types import Message, Receive, Send

from payrouter.http_errors import error_bytes

__all__ = ["json_error", "replay_body", "send_response"]


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
