"""Provider calls honour the environment's proxy (``HTTP(S)_PROXY``, ``NO_PROXY``), read once
per adapter: a call goes through a real forwarding proxy when one is named, directly otherwise."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from payrouter.http_client import env_proxy, new_session
from payrouter.sandbox.serving import serve_in_thread
from payrouter.sandbox.upstream import TestUpstream
from payrouter.upstream.openai import OpenAICompatible

PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy", "ALL_PROXY")


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)


def test_the_proxy_is_the_one_the_environment_names_for_the_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "https://api.example.com/v1/chat/completions"
    assert env_proxy(url) is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("HTTP_PROXY", "http://plain.internal:3128")
    assert env_proxy(url) == "http://proxy.internal:3128"
    assert env_proxy("http://api.example.com/v1") == "http://plain.internal:3128"
    monkeypatch.setenv("NO_PROXY", "example.com,localhost")
    assert env_proxy(url) is None
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("ALL_PROXY", "http://any.internal:3128")  # the fallback for every scheme
    assert env_proxy(url) == "http://any.internal:3128"


class _ForwardingProxy:
    """An HTTP proxy for plain-HTTP targets: forwards each absolute-form request to ``target``."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.forwarded: list[str] = []
        self.app = Starlette(routes=[Route("/{path:path}", self._forward, methods=["POST"])])

    async def _forward(self, request: Request) -> Response:
        self.forwarded.append(request.url.path)
        async with httpx.AsyncClient(trust_env=False) as client:  # not through itself
            reply = await client.post(
                self.target + request.url.path,
                content=await request.body(),
                headers={"content-type": request.headers["content-type"]},
            )
        return Response(reply.content, reply.status_code, media_type="application/json")


@pytest.fixture
def upstream() -> Iterator[tuple[TestUpstream, str]]:
    model = TestUpstream()
    with serve_in_thread(model.app) as url:
        yield model, url


def _chat(base: str) -> int:
    async def run() -> int:
        session = new_session()
        try:
            completion = await OpenAICompatible(base + "/v1", None, session).chat(
                {"messages": [{"role": "user", "content": "hello"}]}, "gpt-4o-mini", 16
            )
            return completion.output_tokens
        finally:
            await session.close()

    return asyncio.run(run())


def test_a_call_goes_through_the_named_proxy_and_directly_without_one(
    upstream: tuple[TestUpstream, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, base = upstream
    proxy = _ForwardingProxy(base)
    with serve_in_thread(proxy.app) as proxy_url:
        assert _chat(base) > 0
        assert proxy.forwarded == [] and sum(model.calls.values()) == 1
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        assert _chat(base) > 0
        assert proxy.forwarded == ["/v1/chat/completions"]
        assert sum(model.calls.values()) == 2
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        assert _chat(base) > 0
        assert proxy.forwarded == ["/v1/chat/completions"]  # bypassed
        assert sum(model.calls.values()) == 3
