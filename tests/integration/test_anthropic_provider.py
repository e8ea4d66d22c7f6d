"""Models behind the Anthropic Messages API, through payrouter, paid, streaming and not."""

from __future__ import annotations

import json
import secrets
from typing import Any

import httpx
import openai

from payrouter.client import PaymentTransport, SpendingPolicy
from payrouter.sandbox.dev import Sandbox
from wallets import LocalSigner

from .conftest import Observer
from .test_streaming import _wait_for_change


def _client(box: Sandbox) -> tuple[LocalSigner, httpx.Client]:
    agent = LocalSigner.generate()
    box.token.mint(agent.address, 5_000_000)
    return agent, httpx.Client(transport=PaymentTransport(agent, SpendingPolicy(max_per_call=10**6)), timeout=30)


def test_paid_call_through_the_messages_api(box: Sandbox, observer: Observer) -> None:
    agent, http = _client(box)
    body = {
        "model": "claude-3-5-haiku",
        "max_tokens": 80,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": f"hi {secrets.token_hex(3)}"},
        ],
    }
    with http:
        response = http.post(f"{box.router_url}/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["object"] == "chat.completion" and data["model"] == "claude-3-5-haiku"
    assert data["choices"][0]["message"]["content"].startswith("[claude-3-5-haiku-latest]")
    assert data["usage"]["prompt_tokens_details"]["cached_tokens"] == 3  # exact usage, cache included
    sent = httpx.get(f"{box.upstream_url}/_last").json()
    assert sent["headers"]["anthropic-version"] == "2023-06-01"
    assert sent["body"]["system"] == "Be brief." and sent["body"]["max_tokens"] == 80
    assert observer.balances(agent.address)[0] < 5_000_000


def test_tools_round_trip(box: Sandbox) -> None:
    _, http = _client(box)
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    body = {
        "model": "claude-sonnet-4",
        "max_tokens": 60,
        "tools": tools,
        "messages": [{"role": "user", "content": secrets.token_hex(4)}],
    }
    with http:
        response = http.post(f"{box.router_url}/v1/chat/completions", json=body)
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["function"]["name"] == "weather" and json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert httpx.get(f"{box.upstream_url}/_last").json()["body"]["tools"][0]["name"] == "weather"


def test_openai_sdk_streams_from_an_anthropic_model(box: Sandbox, observer: Observer) -> None:
    agent, http = _client(box)
    tools: Any = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    with http, openai.OpenAI(base_url=f"{box.router_url}/v1", api_key="unused", http_client=http) as client:  # type: ignore[arg-type]
        stream = client.chat.completions.create(
            model="claude-3-5-haiku", max_tokens=60, stream=True, tools=tools,
            messages=[{"role": "user", "content": secrets.token_hex(4)}],
        )  # fmt: skip
        chunks: list[Any] = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("[claude-3-5-haiku-latest]")
    arguments = "".join(
        (c.choices[0].delta.tool_calls or [])[0].function.arguments or ""
        for c in chunks
        if c.choices and c.choices[0].delta.tool_calls
    )
    assert json.loads(arguments) == {"city": "Paris"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    _wait_for_change(observer, agent.address, 5_000_000)
