"""The outgoing HTTP calls (provider adapters, the chain's JSON-RPC) over real local servers: a
redirect is never followed, a request that never left is "never reached", and a finished stream
gives its connection back."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from payrouter.chain import ChainClient, ChainError, ReplyLost
from payrouter.http_client import new_session
from payrouter.sandbox.serving import serve_in_thread
from payrouter.upstream import AnthropicMessages, OpenAICompatible, UpstreamError

REQUEST: dict[str, Any] = {"messages": [{"role": "user", "content": "my private prompt"}]}


class _Elsewhere:
    """Another host: records whatever reaches it and answers like a provider and a node."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        self.app = Starlette(routes=[Route("/{path:path}", self._any, methods=["GET", "POST"])])

    async def _any(self, request: Request) -> Response:
        self.seen.append({"path": request.url.path, "x-api-key": request.headers.get("x-api-key", "")})
        return JSONResponse({"jsonrpc": "2.0", "id": 1, "result": "0x1", "choices": []})


@pytest.fixture
def redirecting() -> Iterator[tuple[str, _Elsewhere]]:
    """A server answering every POST with a 307 to another host (``localhost`` rather than the
    loopback address, so the origin differs)."""
    elsewhere = _Elsewhere()
    with serve_in_thread(elsewhere.app) as other:
        target = other.replace("127.0.0.1", "localhost")

        async def redirect(request: Request) -> Response:
            return Response(status_code=307, headers={"location": target + request.url.path})

        app = Starlette(routes=[Route("/{path:path}", redirect, methods=["POST"])])
        with serve_in_thread(app) as url:
            yield url, elsewhere


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_a_provider_redirect_is_an_error_and_the_prompt_and_key_go_nowhere(
    redirecting: tuple[str, _Elsewhere], kind: str
) -> None:
    url, elsewhere = redirecting

    async def run() -> None:
        session = new_session()
        try:
            adapter = (
                OpenAICompatible(url + "/v1", "sk-SECRET", session)
                if kind == "openai"
                else AnthropicMessages(url, "sk-ant-SECRET", session)
            )
            with pytest.raises(UpstreamError) as raised:
                await adapter.chat(REQUEST, "m", 16)
            assert raised.value.status == 307 and not raised.value.retryable
            with pytest.raises(UpstreamError) as streamed:
                await adapter.stream(REQUEST, "m", 16)
            assert streamed.value.status == 307
        finally:
            await session.close()

    asyncio.run(run())
    assert elsewhere.seen == []


def test_a_node_redirect_is_a_lost_reply_and_nothing_is_re_sent(redirecting: tuple[str, _Elsewhere]) -> None:
    url, elsewhere = redirecting

    async def run() -> None:
        client = ChainClient(url + "/rpc", timeout=5)
        try:
            with pytest.raises(ReplyLost):
                await client.send_raw_transaction(b"\x02" + b"\x00" * 40)
        finally:
            await client.close()

    asyncio.run(run())
    assert elsewhere.seen == []


def test_a_connect_that_never_completes_is_never_reached() -> None:
    """A node whose accept queue is full drops new SYNs: the request never leaves, so the
    client must say so (a settlement may then be retried) rather than "reply lost"."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            try:
                filler.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            fillers.append(filler)
        time.sleep(0.2)
        probe = socket.socket()
        probe.settimeout(0.5)
        with pytest.raises(TimeoutError):  # the premise: a connect to this port hangs
            probe.connect(("127.0.0.1", port))
        probe.close()

        async def run() -> None:
            client = ChainClient(f"http://127.0.0.1:{port}/", timeout=1.0)
            try:
                with pytest.raises(ChainError) as raised:
                    await client.chain_id()
                assert not isinstance(raised.value, ReplyLost)
            finally:
                await client.close()

        asyncio.run(run())
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def test_finished_streams_give_their_connection_back_for_the_next_call() -> None:
    ports: list[int] = []

    async def provider(request: Request) -> Response:
        ports.append(request.client.port if request.client else -1)

        async def events() -> AsyncIterator[bytes]:
            for word in ("hello", " world"):
                yield b'data: {"choices": [{"index": 0, "delta": {"content": "' + word.encode() + b'"}}]}\n\n'
            yield b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}\n\n'
            yield b"data: [DONE]\n\n"
            await asyncio.sleep(0.01)  # the body's end comes a moment after [DONE], in its own packet

        return StreamingResponse(events(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/v1/chat/completions", provider, methods=["POST"])])
    with serve_in_thread(app) as url:

        async def run() -> None:
            session = new_session()
            try:
                adapter = OpenAICompatible(url + "/v1", None, session)
                for _ in range(3):
                    stream = await adapter.stream(REQUEST, "m", 16)
                    text = "".join([c["choices"][0]["delta"]["content"] async for c in stream.chunks() if c["choices"]])
                    assert text == "hello world" and stream.usage == {"prompt_tokens": 3, "completion_tokens": 2}
            finally:
                await session.close()

        asyncio.run(run())
    assert len(ports) == 3 and len(set(ports)) == 1, ports  # one connection, reused
