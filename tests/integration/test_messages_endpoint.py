"""``POST /v1/messages``: the official Anthropic SDK, paid, streaming and not."""

from __future__ import annotations

import http.client
import json
import secrets
from typing import Any

import anthropic
import httpx
import httpx2
import pytest

from payrouter.client import PaymentTransport, SpendingPolicy
from payrouter.sandbox.dev import Sandbox
from wallets import LocalSigner

from .conftest import Observer
from .test_streaming import _wait_for_change


def _sdk(box: Sandbox) -> tuple[LocalSigner, Any]:
    """The Anthropic SDK runs on httpx2 (httpx's successor): our transport wraps its transport."""
    agent = LocalSigner.generate()
    box.token.mint(agent.address, 5_000_000)
    transport = PaymentTransport(agent, SpendingPolicy(max_per_call=10**6), transport=httpx2.HTTPTransport())  # type: ignore[arg-type]
    return agent, httpx2.Client(transport=transport, timeout=30)  # type: ignore[arg-type]


def test_anthropic_sdk_pays_for_a_message(box: Sandbox, observer: Observer) -> None:
    agent, http = _sdk(box)
    with http, anthropic.Anthropic(base_url=box.router_url, api_key="unused", http_client=http) as client:
        message = client.messages.create(
            model="gpt-4o-mini",  # an OpenAI-compatible model, asked for in Anthropic's shape
            max_tokens=60,
            system="Be brief.",
            messages=[{"role": "user", "content": f"hello {secrets.token_hex(3)}"}],
        )
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "text" and message.content[0].text.startswith("[gpt-4o-mini]")
    assert message.stop_reason in ("end_turn", "max_tokens") and message.usage.output_tokens > 0
    assert observer.balances(agent.address)[0] < 5_000_000


def test_anthropic_sdk_streams_and_uses_tools(box: Sandbox, observer: Observer) -> None:
    agent, http = _sdk(box)
    tools = [{"name": "weather", "description": "weather", "input_schema": {"type": "object"}}]
    with http, anthropic.Anthropic(base_url=box.router_url, api_key="unused", http_client=http) as client:
        with client.messages.stream(
            model="claude-3-5-haiku",
            max_tokens=60,
            tools=tools,  # type: ignore[arg-type]
            messages=[{"role": "user", "content": f"weather? {secrets.token_hex(3)}"}],
        ) as stream:
            final = stream.get_final_message()
    text = "".join(b.text for b in final.content if b.type == "text")
    assert text.startswith("[claude-3-5-haiku-latest]")
    tool = next(b for b in final.content if b.type == "tool_use")
    assert tool.name == "weather" and tool.input == {"city": "Paris"}
    assert final.stop_reason == "tool_use"
    _wait_for_change(observer, agent.address, 5_000_000)


def test_messages_requires_max_tokens(box: Sandbox) -> None:
    response = httpx.post(
        f"{box.router_url}/v1/messages", json={"model": "auto", "messages": [{"role": "user", "content": "x"}]}
    )
    assert response.status_code == 400
    assert response.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: an integer is required"},
    }


_BAD_SHAPES = [
    ({"content": [1]}, "messages.0.content.0"),
    ({"content": ["x"]}, "messages.0.content.0"),
    ({"content": [[]]}, "messages.0.content.0"),
    ({"content": [{"type": "text", "text": 5}]}, "messages.0.content.0.text"),
    ({"content": 5}, "messages.0.content"),
    ({"content": {"type": "text", "text": "x"}}, "messages.0.content"),
    ({"content": [{"type": "image", "source": "x"}]}, "messages.0.content.0.source"),
    ({"content": [{"type": "tool_result", "tool_use_id": "t", "content": [1]}]}, "messages.0.content.0.content.0"),
    ({"content": [{"type": "tool_result", "tool_use_id": "t", "content": 5}]}, "messages.0.content.0.content"),
    ({"content": "x", "system": [1]}, "system.0"),
    ({"content": "x", "system": 5}, "system"),
    ({"content": "x", "system": [{"type": "text", "text": ["x"]}]}, "system.0.text"),
    ({"content": "x", "tools": [1]}, "tools.0"),
    ({"content": "x", "tools": [{"description": "no name"}]}, "tools.0.name"),
    ({"content": "x", "tools": "weather"}, "tools"),
]


@pytest.mark.parametrize(("shape", "field"), _BAD_SHAPES)
def test_messages_with_a_malformed_block_is_a_400_on_a_live_connection(
    box: Sandbox, observer: Observer, shape: dict[str, Any], field: str
) -> None:
    message: dict[str, Any] = {"role": "user", "content": shape["content"]}
    body = {"model": "auto", "max_tokens": 10, "messages": [message]} | {
        k: v for k, v in shape.items() if k != "content"
    }
    url = httpx.URL(box.router_url)
    conn = http.client.HTTPConnection(url.host, url.port, timeout=10)
    try:
        with observer.unchanged():
            conn.request("POST", "/v1/messages", json.dumps(body), {"content-type": "application/json"})
            response = conn.getresponse()
            raw = response.read()
            assert response.status == 400, raw
            answer = json.loads(raw)
            assert answer["type"] == "error" and answer["error"]["type"] == "invalid_request_error"
            assert answer["error"]["message"].startswith(f"{field}: ")
            sock = conn.sock
            assert sock is not None, "the server closed the keep-alive connection"
            conn.request("GET", "/healthz")
            again = conn.getresponse()
            again.read()
            assert again.status == 200 and conn.sock is sock
    finally:
        conn.close()
