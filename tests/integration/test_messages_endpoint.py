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
from payrouter.x402.wire import decode_header
from wallets import LocalSigner

from .conftest import Observer
from .test_streaming import _wait_for_change


class _OfferRecorder(httpx2.BaseTransport):
    """Under the paying transport: keeps the offer of every 402 and every payment sent."""

    def __init__(self) -> None:
        self.inner = httpx2.HTTPTransport()
        self.offers: list[dict[str, Any]] = []
        self.payments: list[dict[str, Any]] = []

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        if "payment-signature" in request.headers:
            self.payments.append(decode_header(request.headers["payment-signature"]))
        response = self.inner.handle_request(request)
        if response.status_code == 402:
            self.offers.append(decode_header(response.headers["payment-required"]))
        return response

    def close(self) -> None:
        self.inner.close()

    def quote(self) -> tuple[int, str]:
        """``(amount, payTo)`` of the one offer that was paid, checked against what was signed."""
        assert len(self.offers) == 1 and len(self.payments) == 1, (self.offers, self.payments)
        (accepted,) = [a for a in self.offers[0]["accepts"] if a["scheme"] == self.payments[0]["accepted"]["scheme"]]
        signed = self.payments[0]["payload"]["authorization"]
        assert int(signed["value"]) == int(accepted["amount"]) and signed["to"] == accepted["payTo"]
        return int(accepted["amount"]), accepted["payTo"]


def _sdk(box: Sandbox) -> tuple[LocalSigner, Any, _OfferRecorder]:
    """The Anthropic SDK runs on httpx2 (httpx's successor): our transport wraps its transport."""
    agent = LocalSigner.generate()
    box.token.mint(agent.address, 5_000_000)
    recorder = _OfferRecorder()
    transport = PaymentTransport(agent, SpendingPolicy(max_per_call=10**6), transport=recorder)  # type: ignore[arg-type]
    return agent, httpx2.Client(transport=transport, timeout=30), recorder  # type: ignore[arg-type]


def _assert_charged_exactly(
    box: Sandbox, observer: Observer, recorder: _OfferRecorder, agent: LocalSigner, operator_before: int
) -> None:
    quote, pay_to = recorder.quote()
    assert quote > 0 and pay_to == box.operator.address
    agent_after, operator_after = observer.balances(agent.address, pay_to)
    assert 5_000_000 - agent_after == quote, "the agent paid exactly the quoted amount"
    assert operator_after - operator_before == quote, "the operator gained exactly the quoted amount"


def test_anthropic_sdk_pays_for_a_message(box: Sandbox, observer: Observer) -> None:
    agent, http, recorder = _sdk(box)
    operator_before = observer.balances(box.operator.address)[0]
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
    _assert_charged_exactly(box, observer, recorder, agent, operator_before)


def test_anthropic_sdk_streams_and_uses_tools(box: Sandbox, observer: Observer) -> None:
    agent, http, recorder = _sdk(box)
    operator_before = observer.balances(box.operator.address)[0]
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
    _wait_for_change(observer, agent.address, 5_000_000)  # settled after the stream
    _assert_charged_exactly(box, observer, recorder, agent, operator_before)


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
