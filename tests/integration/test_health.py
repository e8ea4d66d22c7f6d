"""Shared model health: breakers opened by 429s and repeated failures, seen by every instance."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from pydantic import SecretStr

from payrouter.app import create_app
from payrouter.sandbox.dev import Sandbox
from payrouter.sandbox.serving import serve_in_thread
from payrouter.settings import ProviderSettings, Settings

from ..polling import wait_until
from .conftest import REDIS_URL, Observer, authorizer_key, router_settings
from .payments import header, offer, payment


@pytest.fixture
def second_instance(box: Sandbox) -> Iterator[str]:
    """Another payrouter on the same Redis namespace as the sandbox's router."""
    settings = router_settings(box)
    with serve_in_thread(create_app(settings)) as url:
        yield url


def _routable(url: str) -> set[str]:
    """The models an instance would route to now: its quote's candidates leave out open breakers
    (as its in-memory health snapshot, refreshed every second, sees them)."""
    body = {"model": "auto:quality", "messages": [{"role": "user", "content": "hi"}]}
    response = httpx.post(f"{url}/v1/quote", json=body)
    response.raise_for_status()
    return {c["model"] for c in response.json()["route"]["candidates"]}


@pytest.fixture
def clean_breakers(box: Sandbox) -> Iterator[None]:
    yield
    with redis.Redis.from_url(REDIS_URL) as r:
        for key in r.scan_iter(match=f"{box.namespace}:health:*"):
            r.delete(key)
    every = {m.id for m in box.table.models}
    wait_until(lambda: _routable(box.router_url) == every, "the router's snapshot to see every breaker closed")


def _paid_call(box: Sandbox, http: httpx.Client, model: str, **extra: Any) -> httpx.Response:
    url = f"{box.router_url}/v1/chat/completions"
    body = {"model": model, "messages": [{"role": "user", "content": secrets.token_hex(6)}], **extra}
    o = offer(http, url, body)
    return http.post(url, json=body, headers=header(payment(o, box.agents[2])))


def _models(url: str) -> dict[str, Any]:
    data: dict[str, Any] = httpx.get(f"{url}/v1/health/models").json()["models"]
    return data


@pytest.mark.usefixtures("clean_breakers")
def test_429_with_retry_after_opens_the_breaker_everywhere(
    box: Sandbox, http: httpx.Client, observer: Observer, second_instance: str
) -> None:
    observer.control(fail_models=["gpt-4o"], fail_status=429, retry_after=40)
    before = observer.balances(box.agents[2].address)
    assert _paid_call(box, http, "gpt-4o", routing={"only": ["gpt-4o"]}).status_code == 502
    assert observer.balances(box.agents[2].address) == before  # failed: nothing charged
    with redis.Redis.from_url(REDIS_URL) as r:
        ttl = r.ttl(f"{box.namespace}:health:breaker:gpt-4o")
    assert 30 < ttl <= 40  # the provider's Retry-After, not the default cooldown
    for url in (box.router_url, second_instance):
        state = _models(url)["gpt-4o"]
        assert state["breaker"] == "open" and "429" in state["open_reason"] and state["error_rate"] > 0
    # the second instance routes around it: auto:quality among the two would pick gpt-4o
    body = {
        "model": "auto:quality",
        "messages": [{"role": "user", "content": "hi"}],
        "routing": {"only": ["gpt-4o", "gpt-4o-mini"]},
    }
    wait_until(
        lambda: httpx.post(f"{second_instance}/v1/quote", json=body).json()["route"]["model"] == "gpt-4o-mini",
        "the second instance to route around the open breaker",
    )


@pytest.mark.usefixtures("clean_breakers")
def test_repeated_failures_open_the_breaker(box: Sandbox, http: httpx.Client, observer: Observer) -> None:
    observer.control(fail_models=["claude-3-5-haiku-latest"], fail_status=500)
    for i in range(3):
        assert _models(box.router_url)["claude-3-5-haiku"]["breaker"] == "closed", i
        # "only": no failover (the learned router may rate a cheaper model at least as good)
        assert _paid_call(box, http, "claude-3-5-haiku", routing={"only": ["claude-3-5-haiku"]}).status_code == 502
    state = _models(box.router_url)["claude-3-5-haiku"]
    assert state["breaker"] == "open" and state["calls"] >= 3


@pytest.mark.usefixtures("clean_breakers")
def test_success_records_latency(box: Sandbox, http: httpx.Client) -> None:
    assert _paid_call(box, http, "llama-3.1-8b").status_code == 200
    # successes are written in bulk shortly after the answer (never on the paid path)
    state = wait_until(
        lambda: (s := _models(box.router_url)["llama-3.1-8b"]).get("first_byte_ms") and s, "the success recorded"
    )
    assert state["breaker"] == "closed" and state["first_byte_ms"] > 0 and state["error_rate"] == 0


@pytest.mark.usefixtures("clean_breakers")
def test_context_length_error_fails_over(box: Sandbox, http: httpx.Client, observer: Observer) -> None:
    # the routed model refuses the prompt as too long for its context; its first fallback takes it
    url = f"{box.router_url}/v1/chat/completions"
    prompt = "please consider " * 20 + secrets.token_hex(4)
    body = {"model": "auto:quality", "max_tokens": 50, "messages": [{"role": "user", "content": prompt}]}
    o = offer(http, url, body)
    route = o["accepts"][0]["extra"]["route"]
    fallback = route["fallbacks"][0]
    assert route["model"] != fallback
    observer.control(context_limit=50, long_context_models=[fallback])
    response = http.post(url, json=body, headers=header(payment(o, box.agents[2])))
    assert response.status_code == 200, response.text
    assert response.headers["x-payrouter-model"] == fallback
    assert response.json()["usage"]["payrouter"]["attempts"] == 2


@pytest.fixture
def impatient_router(box: Sandbox) -> Iterator[str]:
    """A router whose providers give up waiting for a first byte after 0.3 s."""
    settings = Settings(
        price_table=box.table,
        providers={
            p: ProviderSettings(base_url=f"{box.upstream_url}/v1", first_byte_timeout=0.3, timeout=5)
            for p in {m.provider for m in box.table.models}
        },
        rpc_url=box.chain.rpc_url,
        gas_key=SecretStr(box.chain.new_account().unsafe_export_private_key()),
        channel_authorizer_key=authorizer_key(box),
    )
    with serve_in_thread(create_app(settings)) as url:
        yield url


@pytest.mark.parametrize("knob", [{"delay_ms": 1500}, {"malformed": True}], ids=["slow_first_byte", "malformed_json"])
def test_slow_or_malformed_provider_charges_nothing(
    impatient_router: str, box: Sandbox, http: httpx.Client, observer: Observer, knob: dict[str, Any]
) -> None:
    url = f"{impatient_router}/v1/chat/completions"
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": secrets.token_hex(6)}]}
    o = offer(http, url, body)
    observer.control(**knob)
    before = observer.balances(box.agents[2].address)
    started = time.monotonic()
    response = http.post(url, json=body, headers=header(payment(o, box.agents[2])))
    assert response.status_code == 502, response.text
    assert "not settled" in response.json()["error"]["message"]
    assert time.monotonic() - started < 1.4 or "malformed" in knob  # the first-byte timeout fired
    assert observer.balances(box.agents[2].address) == before
    state = _models(impatient_router)["gpt-4o-mini"]
    assert state["error_rate"] > 0 and ("timed out" in state["last_error"] or "malformed" in state["last_error"])
