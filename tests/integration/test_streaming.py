"""Paid streaming: both settlement moments, failures before and during the stream, hang-ups."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from pydantic import SecretStr

from payrouter.app import create_app
from payrouter.client import PaymentTransport, SpendingPolicy, receipt_of
from payrouter.sandbox.dev import Sandbox
from payrouter.sandbox.serving import serve_in_thread
from payrouter.settings import ProviderSettings, Settings
from pricing import StreamingPolicy
from wallets import LocalSigner

from .conftest import Observer, authorizer_key
from .payments import header, offer, payment, sse_events


def _agent(box: Sandbox) -> LocalSigner:
    agent = LocalSigner.generate()
    box.token.mint(agent.address, 5_000_000)
    return agent


def _body(**kw: Any) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "stream": True,
        "max_tokens": 60,
        "messages": [{"role": "user", "content": secrets.token_hex(6)}],
        **kw,
    }


def test_openai_sdk_streams_a_paid_answer(box: Sandbox, http: httpx.Client, observer: Observer) -> None:
    agent = _agent(box)
    body = _body()
    # the quote of this very request (the SDK's own 402 gets the same)
    amount = int(offer(http, f"{box.router_url}/v1/chat/completions", body)["accepts"][0]["amount"])
    before = observer.balances(agent.address, box.operator.address)
    with (
        httpx.Client(transport=PaymentTransport(agent, SpendingPolicy(max_per_call=10**6))) as http_client,
        openai.OpenAI(base_url=f"{box.router_url}/v1", api_key="unused", http_client=http_client) as client,  # type: ignore[arg-type]
    ):
        stream = client.chat.completions.create(**body)
        pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces).startswith("[gpt-4o-mini]")
    # the SDK hangs up right after [DONE]; the settlement that follows the stream still happens
    _wait_for_change(observer, agent.address, before[0])
    after = observer.balances(agent.address, box.operator.address)
    assert (before[0] - after[0], after[1] - before[1]) == (amount, amount)


def test_after_stream_receipt_is_the_last_event(box: Sandbox, http: httpx.Client, observer: Observer) -> None:
    agent = _agent(box)
    url = f"{box.router_url}/v1/chat/completions"
    body = _body()
    o = offer(http, url, body)
    amount = int(o["accepts"][0]["amount"])
    with http.stream("POST", url, json=body, headers=header(payment(o, agent))) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert "payment-response" not in response.headers  # it comes at the end
        events = sse_events(response.read().decode())
    assert events[-2] == (None, "[DONE]")
    name, data = events[-1]
    receipt = json.loads(data)
    assert name == "x402.payment" and receipt["success"] is True and receipt["x402Version"] == 2
    assert box.chain.w3.eth.get_transaction_receipt(receipt["transaction"])["status"] == 1
    assert observer.balances(agent.address) == [5_000_000 - amount]
    # the usage chunk says what was charged and what the tokens actually priced at
    usage = json.loads(events[-3][1])["usage"]
    report = usage["payrouter"]
    assert report["charged"] == str(amount) and report["network"] == box.table.network
    assert report["answered_by"] == report["routed_model"] == "gpt-4o-mini" and report["attempts"] == 1
    assert usage["completion_tokens"] > 0 and 0 < int(report["usage_price"]) <= amount


def test_anthropic_stream_reports_the_charge_in_message_delta(
    box: Sandbox, http: httpx.Client, observer: Observer
) -> None:
    agent = _agent(box)
    url = f"{box.router_url}/v1/messages"
    body = {
        "model": "claude-3-5-haiku",
        "max_tokens": 40,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    o = offer(http, url, body)
    amount = int(o["accepts"][0]["amount"])
    with http.stream("POST", url, json=body, headers=header(payment(o, agent))) as response:
        assert response.status_code == 200
        events = sse_events(response.read().decode())
    names = [name for name, _ in events]
    assert names[0] == "message_start" and "message_stop" in names
    delta = json.loads(next(data for name, data in events if name == "message_delta"))
    assert delta["payrouter"]["charged"] == str(amount)
    assert delta["payrouter"]["answered_by"] == "claude-3-5-haiku"
    assert 0 < int(delta["payrouter"]["usage_price"]) <= amount
    _wait_for_change(observer, agent.address, 5_000_000)


@pytest.fixture(scope="module")
def before_first_byte_router(box: Sandbox) -> Iterator[str]:
    table = box.table.model_copy(update={"streaming": StreamingPolicy(settlement="before_first_byte")})
    settings = Settings(
        price_table=table,
        providers={p: ProviderSettings(base_url=f"{box.upstream_url}/v1") for p in {m.provider for m in table.models}},
        rpc_url=box.chain.rpc_url,
        gas_key=SecretStr(box.chain.new_account().unsafe_export_private_key()),
        channel_authorizer_key=authorizer_key(box),
    )
    with serve_in_thread(create_app(settings)) as url:
        yield url


def test_before_first_byte_receipt_is_a_header(before_first_byte_router: str, box: Sandbox, observer: Observer) -> None:
    agent = _agent(box)
    with httpx.Client(transport=PaymentTransport(agent, SpendingPolicy(max_per_call=10**6))) as http:
        with http.stream("POST", f"{before_first_byte_router}/v1/chat/completions", json=_body()) as response:
            assert response.status_code == 200
            receipt = receipt_of(response)
            assert receipt is not None and receipt.success  # known before the first chunk is read
            text = response.read().decode()
    events = sse_events(text)
    assert events[-2] == (None, "[DONE]")  # and the receipt once more, as the last event
    assert events[-1][0] == "x402.payment" and json.loads(events[-1][1])["transaction"] == receipt.transaction
    assert observer.balances(agent.address) == [5_000_000 - receipt.amount]


def test_failure_before_the_first_chunk_charges_nothing(box: Sandbox, http: httpx.Client, observer: Observer) -> None:
    agent = _agent(box)
    url = f"{box.router_url}/v1/chat/completions"
    body = _body()
    o = offer(http, url, body)
    paid = header(payment(o, agent))
    observer.control(fail_next=10, fail_status=503)  # the routed model and every fallback fail
    response = http.post(url, json=body, headers=paid)
    assert response.status_code == 502
    assert observer.balances(agent.address) == [5_000_000]
    observer.control(fail_next=0)
    assert http.post(url, json=body, headers=paid).status_code == 200  # the payment was not used up


def test_stream_broken_half_way_is_served_again_for_the_same_payment(
    box: Sandbox, http: httpx.Client, observer: Observer
) -> None:
    agent = _agent(box)
    url = f"{box.router_url}/v1/chat/completions"
    body = _body()
    o = offer(http, url, body)
    amount = int(o["accepts"][0]["amount"])
    paid = header(payment(o, agent))
    observer.control(break_after=3, break_models=["gpt-4o-mini"])  # only the routed model breaks
    calls = observer.upstream_calls()
    with http.stream("POST", url, json=body, headers=paid) as response:
        events = sse_events(response.read().decode())
    # no failover after the first streamed byte: one upstream call, content from one model
    assert observer.upstream_calls() == calls + 1
    chunks = [json.loads(data) for name, data in events if name is None and data.startswith('{"id"')]
    assert chunks and {c["model"] for c in chunks} == {"gpt-4o-mini"}
    error = json.loads(events[-2][1])
    assert "stream broke" in error["error"]["message"]
    name, data = events[-1]
    receipt = json.loads(data)
    assert name == "x402.payment" and receipt["success"] is True  # the transfer started with the first chunk
    assert observer.balances(agent.address, box.operator.address)[0] == 5_000_000 - amount
    # the same payment again: the whole answer, no second charge
    observer.control(break_after=None, break_models=[])
    with http.stream("POST", url, json=body, headers=paid) as again:
        assert again.status_code == 200
        text = again.read().decode()
    events = sse_events(text)
    assert events[-2] == (None, "[DONE]") and json.loads(events[-1][1])["transaction"] == receipt["transaction"]
    assert "".join(
        json.loads(d)["choices"][0]["delta"].get("content") or ""
        for n, d in events
        if n is None and d.startswith('{"id"') and json.loads(d)["choices"]
    ).startswith("[gpt-4o-mini]")
    assert observer.upstream_calls() == calls + 2
    assert observer.balances(agent.address) == [5_000_000 - amount]
    # and once more: now the kept answer, no model call
    again2 = http.post(url, json=body, headers=paid)
    assert again2.status_code == 200 and sse_events(again2.text)[-2] == (None, "[DONE]")
    assert observer.upstream_calls() == calls + 2


def test_client_hang_up_after_content_is_charged_the_quote(
    box: Sandbox, http: httpx.Client, observer: Observer
) -> None:
    agent = _agent(box)
    url = f"{box.router_url}/v1/chat/completions"
    body = _body(max_tokens=200)
    o = offer(http, url, body)
    amount = int(o["accepts"][0]["amount"])
    observer.control(chunk_delay_ms=50)
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", url, json=body, headers=header(payment(o, agent))) as response,
    ):
        lines = response.iter_lines()
        seen = [next(lines) for _ in range(6)]  # a few chunks with content, then hang up
        assert any('"content": "' in line or '"content":"' in line for line in seen)
    _wait_for_change(observer, agent.address, 5_000_000)
    assert observer.balances(agent.address) == [5_000_000 - amount]


def _wait_for_change(observer: Observer, address: str, balance: int) -> None:
    deadline = time.monotonic() + 10
    while observer.balances(address) == [balance]:
        assert time.monotonic() < deadline, "the payment was never settled"
        time.sleep(0.05)
