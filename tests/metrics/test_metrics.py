"""Every metric family moves as it should after real paid calls, refusals and failovers.

The calls go to one `payrouter serve` process and the metrics are read from the other: both
write one ``PROMETHEUS_MULTIPROC_DIR``, so every assertion also proves the aggregation. The
request log they share gets one line per paid or refused request.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from payrouter.sandbox.dev import Sandbox
from tests.integration.channel_payloads import batch_offer, config_for, opening_payment
from tests.integration.conftest import Observer
from tests.integration.payments import header, offer, payment, rejection, sse_events
from tests.polling import wait_until
from wallets import LocalSigner

from .conftest import Servers
from .scrape import Samples, scrape, value

CHAT = "/v1/chat/completions"


class Delta:
    """What changed between two scrapes."""

    def __init__(self, before: Samples, after: Samples) -> None:
        self.before, self.after = before, after

    def __call__(self, name: str, **labels: str) -> float:
        return value(self.after, name, **labels) - value(self.before, name, **labels)


def _body(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": 32, "messages": [{"role": "user", "content": secrets.token_hex(6)}], **extra}


def _log_line(path: Path, **match: Any) -> dict[str, Any]:
    """The request-log line whose fields include ``match`` (waits for the background writer)."""

    def find() -> dict[str, Any] | None:
        if not path.exists():
            return None
        for line in path.read_text().splitlines():
            event: dict[str, Any] = json.loads(line)
            if all(event.get(k) == v for k, v in match.items()):
                return event
        return None

    found = wait_until(find, f"a request-log line with {match}")
    assert found is not None
    return found


def _receipt(response: httpx.Response) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(base64.b64decode(response.headers["payment-response"]))
    return decoded


def test_paid_call_moves_every_family_and_is_logged(servers: Servers, mbox: Sandbox, mhttp: httpx.Client) -> None:
    a, b = servers.urls
    agent = mbox.agents[0]
    model = "gpt-4o-mini"
    provider = mbox.table.model(model).provider
    asset = mbox.table.asset.address
    before = scrape(b)
    body = _body(model)
    o = offer(mhttp, a + CHAT, body)
    response = mhttp.post(a + CHAT, json=body, headers=header(payment(o, agent)))
    assert response.status_code == 200, response.text
    report = response.json()["usage"]["payrouter"]
    charged = int(report["charged"])
    tx = _receipt(response)["transaction"]
    d = Delta(before, scrape(b))  # the other process reports what this one served

    assert d("payrouter_requests_total", endpoint=CHAT, status="402") == 1
    assert d("payrouter_requests_total", endpoint=CHAT, status="200") == 1
    for scheme in mbox.table.schemes:
        assert d("payrouter_quotes_total", endpoint=CHAT, scheme=scheme) == 1
    assert d("payrouter_routing_decisions_total", strategy="named", model=model, reason="named") == 1
    assert d("payrouter_paid_calls_total", scheme="exact", model=model) == 1
    assert d("payrouter_revenue_atomic_total", model=model, asset=asset) == charged > 0
    cost = d("payrouter_upstream_cost_atomic_total", model=model, asset=asset)
    assert 0 < cost < charged
    assert d("payrouter_margin_atomic", model=model, asset=asset) == charged - cost
    assert d("payrouter_verify_seconds_count", scheme="exact") == 1
    assert d("payrouter_settle_seconds_count", scheme="exact") == 1
    assert d("payrouter_settle_seconds_sum", scheme="exact") > 0
    assert d("payrouter_upstream_first_byte_seconds_count", provider=provider, model=model) == 1
    assert d("payrouter_upstream_seconds_count", provider=provider, model=model) == 1
    assert d("payrouter_gas_spent_wei_total") > 0
    assert d("payrouter_failovers_total", from_model=model, to_model=model) == 0

    line = _log_line(servers.request_log, request_id=response.json()["id"])
    assert line["event"] == "call" and line["status"] == 200 and line["endpoint"] == CHAT
    assert line["payer"] == agent.address and line["scheme"] == "exact" and line["model"] == model
    assert line["strategy"] == "named" and line["reason_kind"] == "named" and line["reason"]
    assert line["price"] == int(o["accepts"][0]["amount"]) and line["charged"] == charged and line["cost"] == cost
    assert line["tx"] == tx and line["refusal"] is None and line["state"] == "settled"
    usage = response.json()["usage"]
    assert (line["input_tokens"], line["output_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert line["latency_ms"] >= line["upstream_ms"] > 0
    assert [c["model"] for c in line["candidates"]] == [model]  # named: the one candidate, with its predictions
    assert set(line["candidates"][0]) == {"model", "quality_bp", "price", "latency_ms"}


def test_refused_payment_is_counted_and_logged(servers: Servers, mbox: Sandbox, mhttp: httpx.Client) -> None:
    a, b = servers.urls
    agent = mbox.agents[1]
    before = scrape(b)
    body = _body("gpt-4o-mini")
    o = offer(mhttp, a + CHAT, body)
    amount = int(o["accepts"][0]["amount"])
    response = mhttp.post(a + CHAT, json=body, headers=header(payment(o, agent, value=amount - 1)))
    status, reason = rejection(response)
    assert status == 402
    d = Delta(before, scrape(b))
    assert d("payrouter_payment_refusals_total", scheme="exact", reason=reason) == 1
    assert d("payrouter_requests_total", endpoint=CHAT, status="402") == 2
    assert d("payrouter_paid_calls_total", scheme="exact", model="gpt-4o-mini") == 0
    assert d("payrouter_revenue_atomic_total", model="gpt-4o-mini", asset=mbox.table.asset.address) == 0

    line = _log_line(servers.request_log, event="refusal", payer=agent.address)
    assert line["refusal"] == reason and line["message"] and line["scheme"] == "exact"
    assert line["price"] == amount and line["charged"] == 0 and line["tx"] is None
    assert line["model"] == "gpt-4o-mini" and line["reason_kind"] == "named"


def test_failover_is_counted_and_logged(
    servers: Servers, mbox: Sandbox, mhttp: httpx.Client, mobserver: Observer
) -> None:
    a, b = servers.urls
    body = _body("auto:quality")
    o = offer(mhttp, a + CHAT, body)
    route = o["accepts"][0]["extra"]["route"]
    first = route["model"]
    assert route["fallbacks"], route
    before = scrape(b)
    mobserver.control(fail_next=1, fail_status=503)  # the routed model fails once
    response = mhttp.post(a + CHAT, json=body, headers=header(payment(o, mbox.agents[2])))
    assert response.status_code == 200, response.text
    report = response.json()["usage"]["payrouter"]
    answered = report["answered_by"]
    assert answered != first and report["attempts"] == 2
    d = Delta(before, scrape(b))
    assert d("payrouter_failovers_total", from_model=first, to_model=answered) == 1
    assert d("payrouter_paid_calls_total", scheme="exact", model=answered) == 1
    assert d("payrouter_paid_calls_total", scheme="exact", model=first) == 0
    provider = mbox.table.model(answered).provider
    assert d("payrouter_upstream_seconds_count", provider=provider, model=answered) == 1

    line = _log_line(servers.request_log, request_id=response.json()["id"])
    assert line["model"] == answered and line["routed_model"] == first and line["strategy"] == "quality"
    assert line["candidates"][0]["model"] == first and answered in [c["model"] for c in line["candidates"]]
    assert set(line["candidates"][0]) == {"model", "quality_bp", "price", "latency_ms"}


def test_stream_is_timed_to_its_last_byte(servers: Servers, mbox: Sandbox, mhttp: httpx.Client) -> None:
    a, b = servers.urls
    model = "gpt-4o-mini"
    provider = mbox.table.model(model).provider
    before = scrape(b)
    body = _body(model, stream=True)
    o = offer(mhttp, a + CHAT, body)
    response = mhttp.post(a + CHAT, json=body, headers=header(payment(o, mbox.agents[0])))
    assert response.status_code == 200, response.text
    first = json.loads(sse_events(response.text)[0][1])
    d = Delta(before, scrape(b))
    assert d("payrouter_upstream_first_byte_seconds_count", provider=provider, model=model) == 1
    assert d("payrouter_upstream_seconds_count", provider=provider, model=model) == 1
    assert d("payrouter_paid_calls_total", scheme="exact", model=model) == 1
    line = _log_line(servers.request_log, request_id=first["id"])
    assert line["event"] == "call" and line["upstream_ms"] > 0 and line["output_tokens"] > 0


def test_channel_voucher_is_counted(servers: Servers, mbox: Sandbox, mhttp: httpx.Client) -> None:
    a, b = servers.urls
    payer = LocalSigner.generate()
    mbox.token.mint(payer.address, 10_000_000)
    model = "gpt-4o"
    asset = mbox.table.asset.address
    before = scrape(b)
    body = _body(model)
    quote = offer(mhttp, a + CHAT, body)
    requirement = batch_offer(quote)
    pay = opening_payment(
        quote, config_for(requirement, payer), payer, chain_id=mbox.chain.chain_id, token_domain=mbox.token.domain
    )
    response = mhttp.post(a + CHAT, json=body, headers=header(pay))
    assert response.status_code == 200, response.text
    charged = int(response.json()["usage"]["payrouter"]["charged"])
    d = Delta(before, scrape(b))
    assert d("payrouter_paid_calls_total", scheme="batch-settlement", model=model) == 1
    assert d("payrouter_revenue_atomic_total", model=model, asset=asset) == charged > 0
    assert d("payrouter_verify_seconds_count", scheme="batch-settlement") == 1
    assert d("payrouter_settle_seconds_count", scheme="batch-settlement") == 1
    assert d("payrouter_gas_spent_wei_total") > 0  # the deposit
    line = _log_line(servers.request_log, request_id=response.json()["id"])
    assert line["scheme"] == "batch-settlement" and line["charged"] == charged and line["payer"] == payer.address
    assert line["tx"] == _receipt(response)["transaction"] and line["tx"]  # the deposit's transaction


def test_journal_records_are_read_when_scraped(
    servers: Servers, mbox: Sandbox, mhttp: httpx.Client, mobserver: Observer
) -> None:
    a, b = servers.urls

    def open_records() -> float:
        samples = scrape(b)
        return sum(value(samples, "payrouter_journal_records", state=s) for s in ("claimed", "serving", "settling"))

    idle = open_records()
    body = _body("gpt-4o-mini")
    o = offer(mhttp, a + CHAT, body)
    mobserver.control(delay_ms=1500)  # the payment stays open while the model works
    done: list[int] = []
    call = threading.Thread(
        target=lambda: done.append(
            httpx.post(a + CHAT, json=body, headers=header(payment(o, mbox.agents[3])), timeout=30).status_code
        )
    )
    call.start()
    try:
        wait_until(lambda: open_records() == idle + 1, "the paid call's record counted as open", timeout=10)
    finally:
        call.join(30)
    assert done == [200]
    wait_until(lambda: open_records() == idle, "the settled record no longer counted", timeout=10)
    assert "payrouter_journal_records" in {name for name, _ in scrape(a)}


def test_unknown_paths_share_one_label(servers: Servers, mhttp: httpx.Client) -> None:
    a, b = servers.urls
    before = scrape(b)
    for path in ("/nope", "/wp-admin", f"/{secrets.token_hex(4)}"):
        assert mhttp.get(a + path).status_code == 404
    d = Delta(before, scrape(b))
    assert d("payrouter_requests_total", endpoint="other", status="404") == 3
    assert d("payrouter_requests_total", endpoint="/metrics", status="200") == 1  # the first scrape


def test_repeated_failures_open_the_breaker_gauge(
    servers: Servers, mbox: Sandbox, mhttp: httpx.Client, mobserver: Observer
) -> None:
    # last in this module: the breaker stays open for its cooldown
    a, b = servers.urls
    model = "claude-3-5-haiku"
    assert value(scrape(b), "payrouter_breaker_open", model=model) == 0
    mobserver.control(fail_models=[mbox.table.model(model).upstream_model], fail_status=500)
    for _ in range(3):
        body = _body(model)
        o = offer(mhttp, a + CHAT, body)
        mhttp.post(a + CHAT, json=body, headers=header(payment(o, mbox.agents[3])))
    wait_until(
        lambda: value(scrape(b), "payrouter_breaker_open", model=model) == 1, "the breaker gauge open", timeout=5
    )


def test_payment_presented_again_is_not_counted_twice(servers: Servers, mbox: Sandbox, mhttp: httpx.Client) -> None:
    a, b = servers.urls
    model = "gpt-4o-mini"
    asset = mbox.table.asset.address
    body = _body(model)
    o = offer(mhttp, a + CHAT, body)
    paid = header(payment(o, mbox.agents[0]))
    before = scrape(b)
    first = mhttp.post(a + CHAT, json=body, headers=paid)
    again = mhttp.post(a + CHAT, json=body, headers=paid)  # its answer back, nothing charged twice
    assert first.status_code == again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    d = Delta(before, scrape(b))
    assert d("payrouter_paid_calls_total", scheme="exact", model=model) == 1
    assert d("payrouter_revenue_atomic_total", model=model, asset=asset) == int(
        first.json()["usage"]["payrouter"]["charged"]
    )
    assert d("payrouter_requests_total", endpoint=CHAT, status="200") == 2
    _log_line(servers.request_log, request_id=first.json()["id"])
    time.sleep(0.2)  # the writer's interval: a line for the replay would be there by now
    lines = [json.loads(line) for line in servers.request_log.read_text().splitlines()]
    assert [e["state"] for e in lines if e.get("request_id") == first.json()["id"]] == ["settled"]
