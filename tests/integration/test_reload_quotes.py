"""Reloading the price table under a running router: a quote issued before the reload is paid
and served as quoted (its model and its price), though new requests now route and price
differently."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from payrouter.app import create_app
from payrouter.sandbox.dev import Sandbox
from payrouter.sandbox.serving import serve_in_thread
from pricing import load_price_table
from tests.price_toml import price_table_toml

from ..polling import wait_until
from .conftest import Observer, router_settings
from .payments import header, offer, payment


def _table(box: Sandbox, rule_model: str, mini_output_price: str = "0.60") -> str:
    data: dict[str, Any] = box.table.model_dump(mode="json")
    data["routing"]["rules"] = [{"name": "probe", "keywords": ["probe"], "model": rule_model}]
    for model in data["models"]:
        if model["id"] == "gpt-4o-mini":
            model["output_per_mtok"] = mini_output_price
    return price_table_toml(data)


def _write(path: Path, text: str) -> None:
    path.with_suffix(".tmp").write_text(text)
    os.replace(path.with_suffix(".tmp"), path)


@pytest.fixture
def live_router(box: Sandbox, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    path = tmp_path / "prices.toml"
    _write(path, _table(box, "gpt-4o-mini"))
    settings = router_settings(box, load_price_table(path), price_table_path=path, reload=0.1)
    with serve_in_thread(create_app(settings)) as url:
        yield url, path


def _routed(http: httpx.Client, router: str, body: dict[str, Any]) -> str:
    model: str = http.post(f"{router}/v1/quote", json=body).json()["route"]["model"]
    return model


def test_a_quote_from_before_a_reload_is_paid_as_quoted(
    live_router: tuple[str, Path], box: Sandbox, http: httpx.Client, observer: Observer
) -> None:
    router, path = live_router
    url = f"{router}/v1/chat/completions"
    agent = box.agents[5]
    body = {
        "model": "auto",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": f"probe {secrets.token_hex(4)}"}],
    }
    old = offer(http, url, body)
    assert old["accepts"][0]["extra"]["route"]["model"] == "gpt-4o-mini"
    # the rule now sends these requests elsewhere; gpt-4o-mini is sold on the same terms
    _write(path, _table(box, "gpt-4o"))
    wait_until(lambda: _routed(http, router, body) == "gpt-4o", "the reload", timeout=10, interval=0.1)
    before = observer.balances(agent.address)[0]
    paid = http.post(url, json=body, headers=header(payment(old, agent)))
    assert paid.status_code == 200, paid.text
    assert paid.headers["x-payrouter-model"] == "gpt-4o-mini"
    assert observer.balances(agent.address)[0] == before - int(old["accepts"][0]["amount"])

    # a quote whose model's price changed since is honoured at its quoted price until it expires
    body = {"model": "gpt-4o-mini", "max_tokens": 4000, "messages": [{"role": "user", "content": secrets.token_hex(4)}]}
    stale = offer(http, url, body)
    _write(path, _table(box, "gpt-4o", mini_output_price="0.90"))

    def repriced() -> bool:
        amount = str(http.post(f"{router}/v1/quote", json=body).json()["price"]["amount"])
        return amount != str(stale["accepts"][0]["amount"])

    wait_until(repriced, "the reload", timeout=10, interval=0.1)
    before = observer.balances(agent.address)[0]
    paid = http.post(url, json=body, headers=header(payment(stale, agent)))
    assert paid.status_code == 200, paid.text
    assert observer.balances(agent.address)[0] == before - int(stale["accepts"][0]["amount"])
