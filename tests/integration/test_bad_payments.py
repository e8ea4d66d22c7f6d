"""Every bad payment: 402 with the right reason, no model call, no money moved."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis

from payrouter.chat import request_digest
from payrouter.quote_seal import QuoteSeal
from payrouter.quoting import Quoter
from payrouter.routing import RoutingEngine
from payrouter.sandbox.dev import Sandbox
from payrouter.store import RedisStore
from wallets import LocalSigner

from .conftest import REDIS_URL, Observer
from .payments import header, offer, payment, rejection

BadRequest = Callable[[dict[str, Any], LocalSigner, Sandbox], dict[str, str]]


def _body() -> dict[str, Any]:
    # a unique prompt per test, so each test has its own quote
    return {"model": "auto", "max_tokens": 64, "messages": [{"role": "user", "content": f"q {secrets.token_hex(6)}"}]}


def _b64(text: bytes) -> str:
    return base64.b64encode(text).decode()


CASES: dict[str, tuple[BadRequest, str]] = {
    "malformed_base64": (lambda o, s, b: {"PAYMENT-SIGNATURE": "%%%not-base64%%%"}, "invalid_payload"),
    "malformed_json": (lambda o, s, b: {"PAYMENT-SIGNATURE": _b64(b"{not json")}, "invalid_payload"),
    "json_not_object": (lambda o, s, b: {"PAYMENT-SIGNATURE": _b64(b"[1,2]")}, "invalid_payload"),
    "oversized_header": (lambda o, s, b: {"PAYMENT-SIGNATURE": "A" * 9000}, "invalid_payload"),
    "missing_authorization": (
        lambda o, s, b: header({**payment(o, s), "payload": {"signature": "0x00"}}),
        "invalid_payload",
    ),
    "wrong_x402_version": (lambda o, s, b: header(payment(o, s, version=3)), "invalid_x402_version"),
    "v1_payload_in_v2_header": (lambda o, s, b: header(payment(o, s, version=1)), "invalid_x402_version"),
    "wrong_scheme": (lambda o, s, b: header(payment(o, s, accepted={"scheme": "upto"})), "unsupported_scheme"),
    "wrong_network": (lambda o, s, b: header(payment(o, s, accepted={"network": "eip155:8453"})), "invalid_network"),
    "wrong_asset": (
        lambda o, s, b: header(payment(o, s, accepted={"asset": LocalSigner.generate().address})),
        "invalid_payment_requirements",
    ),
    "wrong_pay_to": (
        lambda o, s, b: header(payment(o, s, accepted={"payTo": (x := LocalSigner.generate().address)}, to=x)),
        "invalid_payment_requirements",
    ),
    "authorization_to_other": (
        lambda o, s, b: header(payment(o, s, to=LocalSigner.generate().address)),
        "invalid_exact_evm_payload_recipient_mismatch",
    ),
    "amount_below_quote": (
        lambda o, s, b: header(
            payment(
                o,
                s,
                accepted={"amount": str(int(o["accepts"][0]["amount"]) - 1)},
                value=int(o["accepts"][0]["amount"]) - 1,
            )
        ),
        "invalid_exact_evm_payload_authorization_value_mismatch",
    ),
    "authorization_value_below_quote": (
        lambda o, s, b: header(payment(o, s, value=int(o["accepts"][0]["amount"]) - 1)),
        "invalid_exact_evm_payload_authorization_value_mismatch",
    ),
    "amount_above_quote": (
        lambda o, s, b: header(payment(o, s, value=int(o["accepts"][0]["amount"]) + 1)),
        "invalid_exact_evm_payload_authorization_value_mismatch",
    ),
    "expired": (
        lambda o, s, b: header(payment(o, s, valid_before=int(time.time()) - 10)),
        "invalid_exact_evm_payload_authorization_valid_before",
    ),
    "expires_within_6_seconds": (
        lambda o, s, b: header(payment(o, s, valid_before=int(time.time()) + 3)),
        "invalid_exact_evm_payload_authorization_valid_before",
    ),
    "not_yet_valid": (
        lambda o, s, b: header(payment(o, s, valid_after=int(time.time()) + 3600)),
        "invalid_exact_evm_payload_authorization_valid_after",
    ),
    "bad_signature": (
        lambda o, s, b: header(payment(o, s, sign_with=LocalSigner.generate())),
        "invalid_exact_evm_payload_signature",
    ),
    "insufficient_balance": (lambda o, s, b: header(payment(o, LocalSigner.generate())), "insufficient_funds"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_payment_is_refused_and_changes_nothing(
    case: str, box: Sandbox, http: httpx.Client, observer: Observer
) -> None:
    build, reason = CASES[case]
    url = f"{box.router_url}/v1/chat/completions"
    body = _body()
    agent = box.agents[1]
    o = offer(http, url, body)
    with observer.unchanged(agent.address, box.operator.address):
        response = http.post(url, json=body, headers=build(o, agent, box))
    assert rejection(response) == (402, reason), response.text
    assert response.headers["cache-control"] == "no-store"


def test_no_payment_header_gets_the_offer(box: Sandbox, http: httpx.Client, observer: Observer) -> None:
    calls = observer.upstream_calls()
    body = _body()
    response = http.post(f"{box.router_url}/v1/chat/completions", json=body)
    assert rejection(response) == (402, "PAYMENT-SIGNATURE header is required")
    required = response.json()
    assert required["x402Version"] == 2  # 31337 has no v1 name, so the body is the v2 object
    req = required["accepts"][0]
    assert req["scheme"] == "exact" and req["network"] == box.chain.network
    assert req["asset"] == box.token.address and req["payTo"] == box.operator.address
    assert (req["extra"]["name"], req["extra"]["version"]) == ("USD Coin", "2")
    dry_run = http.post(f"{box.router_url}/v1/quote", json=body).json()
    assert req["extra"]["route"]["model"] == dry_run["route"]["model"]  # the engine's decision, deterministic
    assert req["amount"] == dry_run["price"]["amount"]
    assert int(req["extra"]["price"]["amount"]) == int(req["amount"])
    assert observer.upstream_calls() == calls


def test_payment_for_a_request_never_quoted(box: Sandbox, http: httpx.Client, observer: Observer) -> None:
    url = f"{box.router_url}/v1/chat/completions"
    agent = box.agents[1]
    o = offer(http, url, _body())
    with observer.unchanged(agent.address, box.operator.address):
        response = http.post(url, json=_body(), headers=header(payment(o, agent)))  # a different prompt
    assert rejection(response) == (402, "invalid_payment_requirements")
    assert "no live quote" in response.json()["message"]


async def _resealed(box: Sandbox, token: str, digest: str, at: float) -> str:
    """The server's own quote ``token`` sealed again as if issued at ``at`` (its key, from the
    store the sandbox shares)."""
    store = RedisStore(REDIS_URL, box.namespace)
    try:
        seal, quoter = QuoteSeal(store), Quoter(box.table, RoutingEngine())
        priced = await seal.open(token, digest, quoter)
        assert priced is not None
        return str((await seal.seal(digest, priced, now=at)).requirements.extra["quote"])
    finally:
        await store.close()


def test_payment_for_an_expired_quote(box: Sandbox, http: httpx.Client, observer: Observer) -> None:
    url = f"{box.router_url}/v1/chat/completions"
    agent = box.agents[1]
    body = _body()
    o = offer(http, url, body)
    accepted = o["accepts"][0]
    digest = request_digest("POST", "/v1/chat/completions", body)
    # the same quote, issued one lifetime (plus a second) ago: sealed by the server's key, expired
    at = time.time() - accepted["maxTimeoutSeconds"] - 1
    accepted["extra"]["quote"] = asyncio.run(_resealed(box, accepted["extra"]["quote"], digest, at))
    with observer.unchanged(agent.address, box.operator.address):
        response = http.post(url, json=body, headers=header(payment(o, agent)))
    assert rejection(response) == (402, "invalid_payment_requirements")
    assert "no live quote" in response.json()["message"]


def test_payment_with_a_tampered_quote(box: Sandbox, http: httpx.Client, observer: Observer) -> None:
    url = f"{box.router_url}/v1/chat/completions"
    agent = box.agents[1]
    body = _body()
    o = offer(http, url, body)
    accepted = o["accepts"][0]
    prefix, epoch, sealed, tag = accepted["extra"]["quote"].split(".")
    fields = json.loads(base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4)))
    # a payer that lowers the quoted price (and pays that) is refused: the tag no longer fits
    fields["a"] = 1
    cheaper = base64.urlsafe_b64encode(json.dumps(fields).encode()).rstrip(b"=").decode()
    accepted["extra"]["quote"] = ".".join((prefix, epoch, cheaper, tag))
    accepted["amount"] = "1"
    with observer.unchanged(agent.address, box.operator.address):
        response = http.post(url, json=body, headers=header(payment(o, agent)))
    assert rejection(response) == (402, "invalid_payment_requirements")
    assert "no live quote" in response.json()["message"]


def test_reused_payment_is_served_once(box: Sandbox, http: httpx.Client, observer: Observer) -> None:
    url = f"{box.router_url}/v1/chat/completions"
    agent = box.agents[2]
    body = _body()
    o = offer(http, url, body)
    amount = int(o["accepts"][0]["amount"])
    paid = header(payment(o, agent))
    before = observer.balances(agent.address, box.operator.address)
    first = http.post(url, json=body, headers=paid)
    assert first.status_code == 200, first.text
    calls = observer.upstream_calls()
    # the same payment again (a payer whose connection dropped): the same answer and receipt,
    # no second model call, no second charge
    second = http.post(url, json=body, headers=paid)
    assert second.status_code == 200, second.text
    assert second.json() == first.json()
    assert second.headers["PAYMENT-RESPONSE"] == first.headers["PAYMENT-RESPONSE"]
    # the same payment for another request is refused
    other = http.post(url, json=_body(), headers=paid)
    assert rejection(other) == (402, "invalid_exact_evm_nonce_already_used")
    assert observer.upstream_calls() == calls
    after = observer.balances(agent.address, box.operator.address)
    assert (before[0] - after[0], after[1] - before[1]) == (amount, amount)


def test_a_payment_that_fails_verification_leaves_no_journal_record(
    box: Sandbox, http: httpx.Client, observer: Observer
) -> None:
    # signing bad payments costs an attacker nothing: none of them may grow the journal
    url = f"{box.router_url}/v1/chat/completions"
    body = _body()
    broke = LocalSigner.generate()
    paid = payment(offer(http, url, body), broke)
    with observer.unchanged(broke.address):
        assert rejection(http.post(url, json=body, headers=header(paid))) == (402, "insufficient_funds")
    nonce = paid["payload"]["authorization"]["nonce"]
    with redis.Redis.from_url(REDIS_URL) as r:
        assert not r.exists(f"{box.namespace}:{{j}}:rec:exact:{broke.address.lower()}:{nonce}")
        assert not list(r.scan_iter(match=f"{box.namespace}:{{j}}:rec:exact:{broke.address.lower()}:*"))
