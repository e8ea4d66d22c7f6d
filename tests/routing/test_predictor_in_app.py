"""A trained router file named in the price table drives `auto` in the running app."""

from __future__ import annotations

import copy
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from payrouter.app import create_app
from payrouter.routing.predictor import QualityPredictor, load_rows
from payrouter.sandbox.serving import serve_in_thread
from payrouter.settings import ProviderSettings, Settings
from pricing import load_price_table
from tests.price_toml import price_table_toml

from . import synthetic
from .test_engine import BASE


def test_price_table_predictor_routes_auto(tmp_path: Path) -> None:
    QualityPredictor.train(load_rows([synthetic.write(tmp_path / "train.csv", 300, seed=3)])).save(
        tmp_path / "router.npz"
    )
    data = copy.deepcopy(BASE)
    data["routing"] = {"quality_floor": 80, "predictor": "router.npz", "strategy": "cost"}
    (tmp_path / "prices.toml").write_text(price_table_toml(data))
    table = load_price_table(tmp_path / "prices.toml")
    assert table.routing.predictor == str(tmp_path / "router.npz")  # resolved next to the table
    # quotes need no chain: a facilitator that only answers /supported is enough to start
    kinds = {"kinds": [{"x402Version": 2, "scheme": "exact", "network": table.network}]}

    async def supported(request: Request) -> JSONResponse:
        return JSONResponse(kinds)

    facilitator = Starlette(routes=[Route("/supported", supported)])
    with serve_in_thread(facilitator) as facilitator_url:
        settings = Settings(
            price_table=table,
            providers={"p": ProviderSettings(base_url="http://127.0.0.1:9/v1")},
            facilitator="remote",
            facilitator_url=facilitator_url,
            rpc_url="http://127.0.0.1:9",  # read by the reconciler only; no payment here
            reconcile_interval=0,
        )
        easy, hard = _route_two_prompts(settings)
    assert (easy["model"], hard["model"]) == ("cheap", "middle")
    assert easy["max_output_tokens"] == 16  # the predicted answer length, not the 1024 default


def _route_two_prompts(settings: Settings) -> tuple[dict[str, object], dict[str, object]]:
    with serve_in_thread(create_app(settings)) as url:

        def route(text: str) -> dict[str, object]:
            body = {"model": "auto", "messages": [{"role": "user", "content": text}]}
            reply: dict[str, object] = httpx.post(f"{url}/v1/quote", json=body).json()["route"]
            return reply

        easy = route("A simple question about seeds (123456)?\nA) yes\nB) no\nAnswer:")
        hard = route("A intricate multi-step question about seeds (123456)?\nA) yes\nB) no\nAnswer:")
    return easy, hard
