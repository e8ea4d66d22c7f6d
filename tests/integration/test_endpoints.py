"""The HTTP surface besides payment: catalog, dry-run quote, health, OpenAPI, CORS, bad requests."""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any

import httpx
import pytest

from payrouter.feedback.auth import RATINGS
from payrouter.sandbox.dev import Sandbox
from pricing import estimate_chat_input_tokens, quote_route

from .conftest import Observer
from .payments import header, payment


def test_models_lists_the_catalog_with_prices(box: Sandbox, http: httpx.Client) -> None:
    data = http.get(f"{box.router_url}/v1/models").json()
    ids = [m["id"] for m in data["data"]]
    assert ids == [m.id for m in box.table.models]
    gpt4o = next(m for m in data["data"] if m["id"] == "gpt-4o")
    # $2.50/M with 20% markup = $3.00/M = 3_000_000 atomic units per million tokens
    assert gpt4o["pricing"]["usd_per_mtok"] == {"input": "2.50", "output": "10.00"}
    assert gpt4o["pricing"]["atomic_per_mtok"] == {"input": "3000000", "output": "12000000"}
    assert data["payment"]["asset"]["address"] == box.token.address
    assert data["payment"]["network"] == box.chain.network


def test_quote_is_a_free_dry_run_that_can_be_paid_directly(
    box: Sandbox, http: httpx.Client, observer: Observer
) -> None:
    messages = [{"role": "user", "content": secrets.token_hex(8)}]
    body = {"model": "gpt-4o", "max_tokens": 300, "messages": messages}
    calls = observer.upstream_calls()
    quote = http.post(f"{box.router_url}/v1/quote", json=body).json()
    assert observer.upstream_calls() == calls
    expected = quote_route(box.table, "gpt-4o", estimate_chat_input_tokens(messages), 300)
    assert quote["price"]["amount"] == str(expected.amount)
    assert quote["route"]["model"] == "gpt-4o" and quote["route"]["max_output_tokens"] == 300
    offer = quote["payment_required"]
    assert offer["accepts"][0]["amount"] == str(expected.amount)
    # pay the dry-run's requirements without the 402 round trip
    before = observer.balances(box.operator.address)[0]
    paid = http.post(f"{box.router_url}/v1/chat/completions", json=body, headers=header(payment(offer, box.agents[0])))
    assert paid.status_code == 200, paid.text
    assert observer.balances(box.operator.address)[0] - before == expected.amount


def test_healthz_and_openapi(box: Sandbox, http: httpx.Client) -> None:
    health = http.get(f"{box.router_url}/healthz")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok" and body["checks"] == {"store": "ok", "chain": "ok", "gas_wallet": "ok"}
    assert body["gas"][0]["address"] == box.gas_wallet.address and body["gas"][0]["state"] == "ok"
    doc = http.get(f"{box.router_url}/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert {"/v1/chat/completions", "/v1/quote", "/v1/models", "/v1/feedback", "/healthz"} <= set(doc["paths"])
    assert doc["paths"]["/v1/feedback"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"][
        "rating"
    ]["enum"] == sorted(RATINGS)
    assert "messages" in doc["components"]["schemas"]["ChatRequest"]["properties"]


def test_cors_exposes_payment_headers(box: Sandbox, http: httpx.Client) -> None:
    body = {"model": "auto", "messages": [{"role": "user", "content": "cors"}]}
    response = http.post(f"{box.router_url}/v1/chat/completions", json=body, headers={"Origin": "https://app.example"})
    assert response.status_code == 402
    exposed = response.headers["access-control-expose-headers"].lower()
    assert "payment-required" in exposed and "payment-response" in exposed
    preflight = http.options(
        f"{box.router_url}/v1/chat/completions",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "payment-signature,content-type",
        },
    )
    assert preflight.status_code == 200
    assert "payment-signature" in preflight.headers["access-control-allow-headers"].lower()


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[]", 400, "JSON object"),
        (json.dumps({"model": "auto"}).encode(), 400, "messages"),
        (json.dumps({"model": "auto", "messages": []}).encode(), 400, "messages"),
        (json.dumps({"model": "auto", "messages": [{"role": "robot", "content": "x"}]}).encode(), 400, "role"),
        (json.dumps({"model": "nope", "messages": [{"role": "user", "content": "x"}]}).encode(), 400, "unknown model"),
        (
            json.dumps(
                {"model": "gpt-4o", "max_tokens": 10**6, "messages": [{"role": "user", "content": "x"}]}
            ).encode(),
            400,
            "output limit",
        ),
        (
            json.dumps({"model": "auto", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}).encode(),
            400,
            "max_tokens",
        ),
        (b'{"model": "auto", "messages": [{"role": "user", "content": "' + b"x" * (1 << 20) + b'"}]}', 413, "exceeds"),
    ],
)
def test_bad_requests_are_clear_errors(
    box: Sandbox, http: httpx.Client, observer: Observer, body: bytes, status: int, fragment: str
) -> None:
    calls = observer.upstream_calls()
    for path in ("/v1/chat/completions", "/v1/quote"):
        response = http.post(f"{box.router_url}{path}", content=body, headers={"content-type": "application/json"})
        assert response.status_code == status, response.text
        assert fragment in response.json()["error"]["message"]
    assert observer.upstream_calls() == calls


def test_bad_request_with_payment_charges_nothing(box: Sandbox, http: httpx.Client, observer: Observer) -> None:
    header_value = base64.b64encode(b'{"x402Version":2}').decode()
    before = observer.balances(box.agents[0].address)
    response = http.post(
        f"{box.router_url}/v1/chat/completions", content=b"{", headers={"PAYMENT-SIGNATURE": header_value}
    )
    assert response.status_code == 400
    assert observer.balances(box.agents[0].address) == before


def test_routing_constraints_over_http(box: Sandbox, http: httpx.Client, observer: Observer) -> None:
    url = f"{box.router_url}/v1/chat/completions"
    body = {"model": "auto:quality", "max_tokens": 100, "messages": [{"role": "user", "content": secrets.token_hex(5)}]}
    quote = http.post(f"{box.router_url}/v1/quote", json=body).json()
    candidates = quote["route"]["candidates"]
    assert quote["route"]["strategy"] == "quality" and len(candidates) == len(box.table.models)
    assert candidates[0]["model"] == quote["route"]["model"]
    cheapest = min(candidates, key=lambda c: int(c["price"]))
    # a price cap in a header changes the route, and the 402 offer is for the capped route
    capped = http.post(url, json=body, headers={"X-Payrouter-Max-Price": cheapest["price"]})
    assert capped.status_code == 402
    offer = json.loads(base64.b64decode(capped.headers["PAYMENT-REQUIRED"]))
    assert int(offer["accepts"][0]["amount"]) <= int(cheapest["price"])
    # the paid retry must send the same header: the quote is keyed by it
    paid = http.post(
        url, json=body, headers={"X-Payrouter-Max-Price": cheapest["price"], **header(payment(offer, box.agents[0]))}
    )
    assert paid.status_code == 200, paid.text
    assert paid.headers["x-payrouter-model"] == offer["accepts"][0]["extra"]["route"]["model"]
    assert "predicted quality" in paid.headers["x-payrouter-route-reason"]
    # impossible constraints: a clear 400 naming the constraint, and no quote
    calls = observer.upstream_calls()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"routing": {"max_price": 1}}, "max_price 1"),
        ({"routing": {"only": ["no-such-model"]}}, "only ['no-such-model']"),
        ({"routing": {"privacy": "local"}}, "privacy local"),
        ({"routing": {"max_price": "cheap"}}, "whole number"),
    ]
    for extra, fragment in cases:
        for path in ("/v1/chat/completions", "/v1/quote"):
            response = http.post(f"{box.router_url}{path}", json={**body, **extra})
            assert response.status_code == 400, response.text
            assert fragment in response.json()["error"]["message"]
            assert "payment-required" not in response.headers
    assert observer.upstream_calls() == calls
