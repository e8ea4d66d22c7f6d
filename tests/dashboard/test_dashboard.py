"""The dashboard after real paid calls: its JSON, and the page as a real headless Chromium renders it.

Calls are paid for real (exact transfers mined on anvil, a channel's vouchers) through the
agent SDK, and one payment is refused; every panel must then show those calls, and the figures
must equal what the agents paid.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from payrouter.client import ChannelOptions, FileChannelStore, PaymentTransport, SpendingPolicy, receipt_of
from payrouter.journal.open import open_journal
from payrouter.ledger import fetch_records, summarize
from payrouter.sandbox.dev import Sandbox
from tests.integration.payments import header, offer, payment, rejection

from .chromium import Chromium
from .conftest import CANARY_CONTROL, CANARY_TRIAL, CANARY_WORD, REDIS_URL, Served

EXACT_MODELS = ["gpt-4o-mini", "gpt-4o-mini", "gpt-4o", "claude-3-5-haiku", "auto", "auto", "gpt-4o-mini"]
CHANNEL_CALLS = 3
CANARY_CALLS = 12
PANELS = ("kpis", "revenue", "models", "routing", "health", "payments", "payers", "canary")


@dataclass
class Traffic:
    """What the tests paid: per payer (lower case) and per routed model."""

    calls: int = 0
    revenue: int = 0
    by_payer: Counter[str] = field(default_factory=Counter)
    calls_by_payer: Counter[str] = field(default_factory=Counter)
    calls_by_model: Counter[str] = field(default_factory=Counter)
    revenue_by_model: Counter[str] = field(default_factory=Counter)
    refusal: str = ""
    channel_charged: int = 0

    def paid(self, payer: str, model: str, amount: int) -> None:
        self.calls += 1
        self.revenue += amount
        self.by_payer[payer.lower()] += amount
        self.calls_by_payer[payer.lower()] += 1
        self.calls_by_model[model] += 1
        self.revenue_by_model[model] += amount


def _body(model: str, i: int, word: str = "dashboard") -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": f"{word} call {i} {time.time()}"}],
    }


@pytest.fixture(scope="module")
def traffic(box: Sandbox, served: Served, tmp_path_factory: pytest.TempPathFactory) -> Traffic:
    url = f"{served.url}/v1/chat/completions"
    seen = Traffic()
    exact_payer, channel_payer, refused_payer = box.agents[:3]
    with httpx.Client(transport=PaymentTransport(exact_payer, SpendingPolicy(max_per_call=1_000_000)), timeout=30) as c:
        for i, model in enumerate(EXACT_MODELS):
            response = c.post(url, json=_body(model, i))
            assert response.status_code == 200, response.text
            receipt = receipt_of(response)
            assert receipt is not None and receipt.success and receipt.scheme == "exact"
            seen.paid(exact_payer.address, response.headers["x-payrouter-model"], receipt.amount)
        for i in range(CANARY_CALLS):  # matched by the canary rule: split between its arms
            response = c.post(url, json=_body("auto", 200 + i, CANARY_WORD))
            assert response.status_code == 200, response.text
            receipt = receipt_of(response)
            assert receipt is not None and receipt.success
            assert response.headers["x-payrouter-model"] in (CANARY_CONTROL, CANARY_TRIAL)
            seen.paid(exact_payer.address, response.headers["x-payrouter-model"], receipt.amount)
    channels = ChannelOptions(store=FileChannelStore(tmp_path_factory.mktemp("channels")), rpc_url=box.chain.rpc_url)
    transport = PaymentTransport(
        channel_payer, SpendingPolicy(max_per_call=1_000_000), channels=channels, scheme="batch-settlement"
    )
    with httpx.Client(transport=transport, timeout=30) as c:
        for i in range(CHANNEL_CALLS):
            response = c.post(url, json=_body("claude-sonnet-4", 100 + i))
            assert response.status_code == 200, response.text
            receipt = receipt_of(response)
            assert receipt is not None and receipt.scheme == "batch-settlement" and receipt.charged is not None
            seen.paid(channel_payer.address, response.headers["x-payrouter-model"], receipt.charged)
            seen.channel_charged += receipt.charged
    with httpx.Client(timeout=30) as c:
        body = _body("gpt-4o", 999)
        quote = offer(c, url, body)
        exact = next(a for a in quote["accepts"] if a["scheme"] == "exact")
        quote = {**quote, "accepts": [exact]}
        short = payment(quote, refused_payer, value=int(exact["amount"]) - 1)
        status, seen.refusal = rejection(c.post(url, json=body, headers=header(short)))
        assert status == 402
    return seen


def _data(served: Served, window: str = "1h") -> dict[str, Any]:
    response = httpx.get(
        f"{served.url}/dashboard/data?window={window}", headers={"Authorization": f"Bearer {served.token}"}
    )
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    doc: dict[str, Any] = response.json()
    return doc


def _settled(served: Served, traffic: Traffic) -> dict[str, Any]:
    """The data once every call's journal record is settled (records are written off the paid path)."""
    deadline = time.monotonic() + 30
    while True:
        doc = _data(served)
        history = doc["history"]
        if history["totals"]["calls"] == traffic.calls and int(history["totals"]["revenue"]) == traffic.revenue:
            return doc
        assert time.monotonic() < deadline, f"journal totals never matched: {history['totals']}"
        time.sleep(0.2)


def _journal_cost(box: Sandbox) -> int:
    async def read() -> int:
        journal = open_journal(REDIS_URL, box.namespace)
        try:
            return summarize(await fetch_records(journal))["total"].upstream_cost
        finally:
            await journal.close()

    return asyncio.run(read())


def test_data_document(served: Served, box: Sandbox, traffic: Traffic) -> None:
    doc = _settled(served, traffic)
    assert doc["errors"] == []
    assert doc["asset"]["decimals"] == box.table.asset.decimals and doc["network"] == box.table.network
    assert doc["catalog"] == [m.id for m in box.table.models]

    history = doc["history"]
    count = len(history["times"])
    assert count == 60 and history["bucket_ms"] == 60_000  # the 1h window: one-minute buckets
    assert all(len(history[k]) == count for k in ("calls", "revenue", "cost", "margin"))
    assert sum(history["calls"]) == traffic.calls and sum(map(int, history["revenue"])) == traffic.revenue
    cost = _journal_cost(box)
    assert int(history["totals"]["cost"]) == cost > 0
    assert int(history["totals"]["margin"]) == traffic.revenue - cost
    assert {m["model"]: m["calls"] for m in history["models"]} == dict(traffic.calls_by_model)
    assert {m["model"]: int(m["revenue"]) for m in history["models"]} == dict(traffic.revenue_by_model)
    assert {k: sum(v) for k, v in history["calls_by_model"].items()} == dict(traffic.calls_by_model)
    assert sum(sum(v) for v in history["calls_by_strategy"].values()) == traffic.calls
    assert {p["payer"]: int(p["revenue"]) for p in history["top_payers"]} == dict(traffic.by_payer)
    exact_calls = len(EXACT_MODELS) + CANARY_CALLS
    assert history["totals"]["by_scheme"] == {"batch-settlement": CHANNEL_CALLS, "exact": exact_calls}
    assert history["records_read"] >= traffic.calls and history["complete_from_ms"] == history["start_ms"]

    current = doc["current"]  # the served process's own registry: only these tests' traffic
    totals = current["totals"]
    assert totals["paid_calls"] == traffic.calls and int(totals["revenue"]) == traffic.revenue
    assert totals["paid_by_scheme"] == {"batch-settlement": CHANNEL_CALLS, "exact": exact_calls}
    assert totals["refusals"] == 1 and totals["quotes"] >= traffic.calls + 1
    assert [(r["reason"], r["count"]) for r in current["refusals"]] == [(traffic.refusal, 1)]
    assert sum(r["count"] for r in current["routing"]) >= traffic.calls
    timed = {m["model"]: m["latency"] for m in current["models"] if m["latency"]}
    assert set(timed) >= set(traffic.calls_by_model)
    for latency in timed.values():
        assert latency["count"] >= 1 and 0 < latency["p50_ms"] <= latency["p95_ms"] <= latency["p99_ms"]
    (rule,) = current["split"]
    assert rule["rule"] and sum(arm["calls"] for arm in rule["arms"]) == CANARY_CALLS
    for arm in rule["arms"]:
        assert arm["arm"] in ("control", "trial") and arm["latency"]["count"] == arm["calls"] > 0
        assert arm["models"] == {CANARY_CONTROL if arm["arm"] == "control" else CANARY_TRIAL: arm["calls"]}
        assert int(arm["revenue"]) > 0

    payments = doc["payments"]
    assert payments["complete"] and all(set(v) == {"count", "amount"} for v in payments["states"].values())
    assert set(doc["health"]) == set(doc["catalog"])
    # no claimer runs here (claim_poll = 0): every voucher's charge is still owed on its channel
    assert doc["channels"] == {"channels": 1, "amount": str(traffic.channel_charged), "open": 1, "complete": True}
    assert json.loads(json.dumps(doc)) == doc  # plain JSON: money as integer strings


def test_browser_renders_every_panel(served: Served, box: Sandbox, traffic: Traffic, tmp_path: Path) -> None:
    _settled(served, traffic)
    profile = tmp_path / "profile"
    profile.mkdir()
    browser = Chromium(profile)
    try:
        browser.navigate(f"{served.url}/dashboard")
        assert browser.evaluate("document.querySelector('form[action=\"/dashboard/login\"]') !== null")
        assert browser.evaluate("document.cookie") == ""
        browser.evaluate(f"document.getElementById('token').value = {json.dumps(served.token)}")
        browser.evaluate("document.querySelector('form').submit()")
        browser.wait_for("location.pathname === '/dashboard' && Number(document.body.dataset.loads || 0) >= 1")
        assert browser.evaluate("document.cookie") == ""  # HttpOnly: the page's script cannot read it
        # the page refreshes itself: a second load follows without any navigation
        first = browser.evaluate("Number(document.body.dataset.updated)")
        browser.wait_for(f"Number(document.body.dataset.updated) > {first}", timeout=15)

        def text(selector: str) -> str:
            value = browser.evaluate(f"(document.querySelector({json.dumps(selector)}) || {{}}).textContent")
            assert value is not None, selector
            return str(value)

        def atomic(selector: str) -> int:
            return int(browser.evaluate(f"document.querySelector({json.dumps(selector)}).dataset.atomic"))

        for panel in PANELS:
            state = browser.evaluate(f"document.querySelector('[data-panel={panel}]').dataset.state")
            assert state == "ok", panel
        assert browser.evaluate("document.getElementById('errors').hidden")

        kpis = "[data-panel=kpis] "
        assert text(kpis + "[data-field=calls]") == str(traffic.calls)
        assert atomic(kpis + "[data-field=revenue]") == traffic.revenue
        assert text(kpis + "[data-field=payers]") == "2"
        assert text(kpis + "[data-field=refusals]") == "1"
        decimals = box.table.asset.decimals
        whole, frac = divmod(traffic.revenue, 10**decimals)
        assert text(kpis + "[data-field=revenue]") == f"${whole}.{frac:0{decimals}d}"

        # revenue over time (the default 6h window): three lines, one point per five minutes
        points = browser.evaluate(
            "[...document.querySelectorAll('#revenue-chart polyline')].map(p => p.getAttribute('points').split(' ').length)"
        )
        assert points == [72, 72, 72]

        for model, calls in traffic.calls_by_model.items():
            row = f'#models tr[data-row="{model}"] '
            assert text(row + "[data-field=calls]") == str(calls), model
            assert atomic(row + "[data-field=revenue]") == traffic.revenue_by_model[model], model

        # routing mix: one bar series per routed model, totals equal the calls
        bars = browser.evaluate("[...document.querySelectorAll('#routing-chart rect')].map(r => r.dataset.series)")
        assert set(bars) == set(traffic.calls_by_model)
        decisions = browser.evaluate(
            "[...document.querySelectorAll('#routing table:last-of-type [data-field=count]')].map(c => Number(c.textContent))"
        )
        assert sum(decisions) >= traffic.calls

        for model in traffic.calls_by_model:
            row = f'#health tr[data-row="{model}"] '
            assert text(row + "[data-field=breaker]") == "closed"
            assert text(row + "[data-field=p50]").endswith(" ms") or text(row + "[data-field=p50]").endswith(" s")

        assert text("#payments [data-field=pending-count]") == "0" and text("#payments [data-field=owed-count]") == "0"
        assert text("#payments [data-field=channels-count]") == "1"
        assert atomic("#payments [data-field=channels-amount]") == traffic.channel_charged
        assert traffic.refusal in browser.evaluate(
            "[...document.querySelectorAll('#payments [data-field=reason]')].map(c => c.textContent)"
        )

        for payer, paid in traffic.by_payer.items():
            row = f'#payers tr[data-row="{payer}"] '
            assert text(row + "[data-field=calls]") == str(traffic.calls_by_payer[payer])
            assert atomic(row + "[data-field=revenue]") == paid

        # the canary arms side by side, as the registry counted them
        (rule,) = _data(served)["current"]["split"]
        for arm in rule["arms"]:
            cell = f'#canary td[data-arm="{arm["arm"]}"]'
            assert text(cell + "[data-field=calls]").startswith(f"{arm['calls']} (")
            assert text(cell + "[data-field=models]") == ", ".join(arm["models"])
            latency = text(cell + "[data-field=latency]")
            assert latency.count(" ms") + latency.count(" s") == 2, latency
        arms = browser.evaluate("[...document.querySelectorAll('#canary th.arm-head')].map(th => th.textContent)")
        assert arms == [arm["arm"] for arm in rule["arms"]]

        # everything came from this origin: no CDN, no other host
        resources = browser.evaluate("performance.getEntriesByType('resource').map(e => e.name)")
        assert resources and all(r.startswith(served.url + "/dashboard") for r in resources), resources

        # another window: fetched at once, kept in the URL
        loads = browser.evaluate("Number(document.body.dataset.loads)")
        browser.evaluate("document.querySelector('#windows [data-window=\"1h\"]').click()")
        browser.wait_for(f"Number(document.body.dataset.loads) > {loads} && location.hash === '#1h'")
        browser.wait_for(
            "document.querySelector('#revenue-chart polyline').getAttribute('points').split(' ').length === 60"
        )
        assert text(".window-label") == "(last 1h)"
        assert text(kpis + "[data-field=calls]") == str(traffic.calls)

        assert browser.page_errors() == []  # no script error, nothing the Content-Security-Policy refused

        shot = tmp_path / "dashboard.png"
        browser.screenshot(shot)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
        if os.environ.get("DASHBOARD_SCREENSHOT"):  # scripts refresh docs/dashboard.png this way
            shutil.copy(shot, os.environ["DASHBOARD_SCREENSHOT"])
    finally:
        browser.close()


def test_browser_without_a_split(plain: Served, served: Served, traffic: Traffic, tmp_path: Path) -> None:
    _settled(served, traffic)
    profile = tmp_path / "profile"
    profile.mkdir()
    browser = Chromium(profile)
    try:
        browser.navigate(f"{plain.url}/dashboard")
        browser.evaluate(f"document.getElementById('token').value = {json.dumps(plain.token)}")
        browser.evaluate("document.querySelector('form').submit()")
        browser.wait_for("Number(document.body.dataset.loads || 0) >= 1")
        assert browser.evaluate("document.querySelector('[data-panel=canary]').dataset.state") == "none"
        assert "No split configured" in browser.evaluate("document.getElementById('canary').textContent")
        # another instance on the same Redis: the journal's history spans instances, this
        # process's own counters saw nothing
        calls = browser.evaluate("document.querySelector('[data-panel=kpis] [data-field=calls]').textContent")
        assert calls == str(traffic.calls)
        assert browser.evaluate("document.querySelector('[data-panel=kpis] [data-field=refusals]').textContent") == "0"
        # signed out, then a wrong token in the form: back to the form with no session
        browser.evaluate("document.querySelector('header form').submit()")
        browser.wait_for("document.getElementById('token') !== null")
        browser.evaluate("document.getElementById('token').value = 'not-the-token-not-the-token'")
        browser.evaluate("document.querySelector('form').submit()")
        browser.wait_for("document.getElementById('message').textContent === 'Wrong token.'")
    finally:
        browser.close()
