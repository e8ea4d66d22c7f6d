"""A failed model call after a valid payment: 502, nothing settled, the payment stays usable."""

from __future__ import annotations

import secrets
import time

import httpx

from payrouter.sandbox.dev import Sandbox

from .conftest import Observer
from .payments import header, offer, payment


def test_upstream_failure_settles_nothing(box: Sandbox, http: httpx.Client, observer: Observer) -> None:
    url = f"{box.router_url}/v1/chat/completions"
    agent = box.agents[3]
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"fail {secrets.token_hex(4)}"}]}
    o = offer(http, url, body)
    amount = int(o["accepts"][0]["amount"])
    paid = header(payment(o, agent))
    before = observer.balances(agent.address, box.operator.address)
    observer.control(fail_models=["gpt-4o-mini"], fail_status=503)
    calls = observer.upstream_calls()
    failed = http.post(url, json=body, headers=paid)
    assert failed.status_code == 502
    assert "not settled" in failed.json()["error"]["message"]
    assert "payment-response" not in failed.headers
    assert observer.upstream_calls() == calls + 1
    assert observer.balances(agent.address, box.operator.address) == before

    # The claim was released: once the model recovers, the same signed payment works once.
    observer.control(fail_models=[])
    ok = http.post(url, json=body, headers=paid)
    assert ok.status_code == 200, ok.text
    after = observer.balances(agent.address, box.operator.address)
    assert (before[0] - after[0], after[1] - before[1]) == (amount, amount)


def test_bad_request_to_upstream_is_not_charged(box: Sandbox, http: httpx.Client, observer: Observer) -> None:
    url = f"{box.router_url}/v1/chat/completions"
    agent = box.agents[3]
    body = {"model": "claude-3-5-haiku", "messages": [{"role": "user", "content": f"bad {secrets.token_hex(4)}"}]}
    o = offer(http, url, body)
    before = observer.balances(agent.address, box.operator.address)
    observer.control(fail_models=["claude-3-5-haiku-latest"], fail_status=400)
    failed = http.post(url, json=body, headers=header(payment(o, agent)))
    assert failed.status_code == 502
    assert observer.balances(agent.address, box.operator.address) == before


def test_no_call_that_cannot_finish_before_the_payment_expires(
    box: Sandbox, http: httpx.Client, observer: Observer
) -> None:
    url = f"{box.router_url}/v1/chat/completions"
    agent = box.agents[3]
    # ~1000 output tokens at the table's 90 tokens/s take ~11 s, plus time to settle
    body = {"model": "gpt-4o-mini", "max_tokens": 1000, "messages": [{"role": "user", "content": secrets.token_hex(5)}]}
    o = offer(http, url, body)
    short_lived = payment(o, agent, valid_before=int(time.time()) + 12)
    calls, before = observer.upstream_calls(), observer.balances(agent.address)
    response = http.post(url, json=body, headers=header(short_lived))
    assert response.status_code == 502
    assert "before the payment authorization expires" in response.json()["error"]["message"]
    assert observer.upstream_calls() == calls and observer.balances(agent.address) == before
