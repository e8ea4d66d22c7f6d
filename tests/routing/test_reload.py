"""Hot reload: a running ``payrouter serve`` picks up a good price table or router file (a
router retrained with payers' ratings included) and refuses a bad one (the old keeps serving);
SIGHUP reloads at once; every worker reloads; a request keeps its snapshot."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from payrouter.cli import main
from payrouter.devchain import free_port
from payrouter.reload import LiveRouting, LiveServices
from payrouter.routing.features import format_signature, prompt_features
from payrouter.routing.predictor import QualityPredictor, load_rows
from payrouter.sandbox.serving import serve_in_thread
from tests.polling import healthz_until_every_worker, wait_until
from tests.price_toml import price_table_toml
from tests.redis_keys import REDIS_URL, delete_namespace, run_token

from . import synthetic
from .test_engine import BASE

CLI = Path(sys.executable).parent / "payrouter"


def _table(rule_model: str, **routing: Any) -> str:
    data = copy.deepcopy(BASE)
    data["routing"].update(routing)
    data["routing"]["rules"] = [{"name": "probe rule", "keywords": ["probe"], "model": rule_model}]
    return price_table_toml(data)


def _write(path: Path, text: str | bytes) -> None:
    # write-then-rename, as an operator's deploy would; the watcher sees one complete file
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(text.encode() if isinstance(text, str) else text)
    os.replace(tmp, path)


@contextmanager
def _facilitator(network: str) -> Iterator[str]:
    """A remote facilitator that only answers /supported, and a node that answers the start-up
    checks (chain id, asset code): quotes need no payment."""
    kinds = {"kinds": [{"x402Version": 2, "scheme": "exact", "network": network}]}

    async def supported(request: Request) -> JSONResponse:
        return JSONResponse(kinds)

    async def rpc(request: Request) -> JSONResponse:
        call = await request.json()
        result = hex(int(network.split(":")[1])) if call["method"] == "eth_chainId" else "0x6080"
        return JSONResponse({"jsonrpc": "2.0", "id": call["id"], "result": result})

    app = Starlette(routes=[Route("/supported", supported), Route("/rpc", rpc, methods=["POST"])])
    with serve_in_thread(app) as url:
        yield url


@contextmanager
def _serve(
    folder: Path, facilitator_url: str, reload: float, workers: int = 1, redis: str = ""
) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    config = folder / "payrouter.toml"
    config.write_text(
        f'price_table = "prices.toml"\nreconcile_interval = 0\nreload = {reload}\n{redis}'
        f'[facilitator]\nmode = "remote"\nurl = "{facilitator_url}"\nrpc_url = "{facilitator_url}/rpc"\n'
        '[providers.p]\nbase_url = "http://127.0.0.1:9/v1"\n'
    )
    port = free_port()
    log = folder / "serve.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [str(CLI), "serve", "--config", str(config), "--port", str(port), "--workers", str(workers)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                return httpx.get(f"{url}/v1/models", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, "payrouter serve answers", timeout=30, interval=0.1)
        yield url, proc, log
    finally:
        proc.terminate()
        proc.wait(15)


def _logged(log: Path, text: str) -> Callable[[], bool]:
    return lambda: text in log.read_text()


def _routed(url: str, text: str = "probe this please") -> str:
    body = {"model": "auto", "messages": [{"role": "user", "content": text}]}
    reply = httpx.post(f"{url}/v1/quote", json=body, timeout=5)
    assert reply.status_code == 200, reply.text
    model: str = reply.json()["route"]["model"]
    return model


def test_serve_reloads_a_good_table_and_refuses_a_bad_one(tmp_path: Path) -> None:
    table = tmp_path / "prices.toml"
    _write(table, _table("cheap"))
    with _facilitator(BASE["network"]) as fac, _serve(tmp_path, fac, reload=0.2) as (url, _proc, log):
        assert _routed(url) == "cheap"
        _write(table, _table("premium"))
        wait_until(lambda: _routed(url) == "premium", "the new table routes", timeout=10, interval=0.1)

        # not TOML, an invalid field, a settlement change: each refused with its reason, old serves
        for bad, reason in [
            ("network = [", "<toml>"),
            (_table("no-such-model"), "names unknown model 'no-such-model'"),
            (_table("cheap").replace(BASE["network"], "eip155:8453"), "network changed"),
        ]:
            _write(table, bad)
            wait_until(_logged(log, reason), f"refusal logged: {reason}", timeout=10, interval=0.1)
            assert _routed(url) == "premium"
        assert log.read_text().count("reload refused") == 3

        # a router file: a good one is picked up, a corrupt one refused
        router = tmp_path / "router.npz"
        QualityPredictor.train(load_rows([synthetic.write(tmp_path / "train.csv", 300, seed=3)])).save(router)
        _write(table, _table("premium", predictor="router.npz", strategy="cost", quality_floor=80))
        easy = "A simple question about seeds (123456)?\nA) yes\nB) no\nAnswer:"
        wait_until(lambda: _routed(url, easy) == "cheap", "the learned router routes", timeout=10, interval=0.1)
        _write(router, b"not a router file")
        wait_until(lambda: "not a payrouter router file" in log.read_text(), "router refusal", timeout=10)
        assert _routed(url, easy) == "cheap" and _routed(url) == "premium"

        # the learning loop: payers rated "weak" wrong on easy questions; the router retrained with
        # their ratings (router train --feedback) replaces the file and the running server uses it
        ratings = tmp_path / "requests.jsonl"
        ratings.write_text("".join(json.dumps(_rating(i)) + "\n" for i in range(150)))
        retrained = tmp_path / "retrained.npz"
        args = ["router", "train", "--data", str(tmp_path / "train.csv"), "--feedback", str(ratings)]
        assert main([*args, "--out", str(retrained)]) == 0
        _write(router, retrained.read_bytes())
        wait_until(lambda: _routed(url, easy) == "middle", "the retrained router routes", timeout=10, interval=0.1)


def _rating(i: int) -> dict[str, object]:
    prompt = f"A simple question about rivers ({5000 + i})?\nA) yes\nB) no\nAnswer:"
    features, fmt = prompt_features(prompt), format_signature(prompt)
    return {"event": "feedback", "router_name": "weak", "rating": "bad", "features": features, "format": fmt}


def test_sighup_reloads_at_once(tmp_path: Path) -> None:
    table = tmp_path / "prices.toml"
    _write(table, _table("cheap"))
    with _facilitator(BASE["network"]) as fac, _serve(tmp_path, fac, reload=0) as (url, proc, log):
        _write(table, _table("middle"))
        time.sleep(0.5)
        assert _routed(url) == "cheap"  # no polling: nothing changes without the signal
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: _routed(url) == "middle", "SIGHUP reloads", timeout=10, interval=0.1)
        assert proc.poll() is None and "reloaded" in log.read_text()


async def test_a_request_keeps_its_snapshot_while_a_reload_swaps() -> None:
    live = LiveRouting.__new__(LiveRouting)
    live.services = "old"  # type: ignore[assignment]
    seen: list[object] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["state"]["services"])
        live.services = "new"  # type: ignore[assignment]  # a reload lands mid-request
        seen.append(scope["state"]["services"])

    state = {"live_routing": live, "services": "startup"}
    await LiveServices(app)({"type": "http", "state": state}, None, None)  # type: ignore[arg-type]
    assert seen == ["old", "old"]
    assert state["services"] == "startup"  # the shared lifespan state is never written
    await LiveServices(app)({"type": "http", "state": state}, None, None)  # type: ignore[arg-type]
    assert seen[-1] == "new"


def test_every_worker_reloads(tmp_path: Path) -> None:
    namespace = f"payrouter-reload-{run_token()}"
    redis = f'redis_url = "{REDIS_URL}"\nnamespace = "{namespace}"\n'
    table = tmp_path / "prices.toml"
    _write(table, _table("cheap"))
    try:
        with _facilitator(BASE["network"]) as fac, _serve(tmp_path, fac, 0.2, workers=2, redis=redis) as (url, _p, log):
            healthz_until_every_worker(url)
            _write(table, _table("premium"))
            # fresh connections land on either worker: twenty new routes in a row means both reloaded
            streak = [0]

            def reloaded_everywhere() -> bool:
                streak[0] = streak[0] + 1 if _routed(url) == "premium" else 0
                return streak[0] >= 20

            wait_until(reloaded_everywhere, "every worker routes by the new table", timeout=15, interval=0.05)
            wait_until(lambda: log.read_text().count("reloaded ") == 2, "each worker logged its reload", timeout=10)
    finally:
        delete_namespace(REDIS_URL, namespace)


def test_sighup_to_the_supervisor_reloads_every_worker(tmp_path: Path) -> None:
    namespace = f"payrouter-reload-{run_token()}"
    redis = f'redis_url = "{REDIS_URL}"\nnamespace = "{namespace}"\n'
    table = tmp_path / "prices.toml"
    _write(table, _table("cheap"))
    try:
        with (
            _facilitator(BASE["network"]) as fac,
            _serve(tmp_path, fac, 0, workers=2, redis=redis) as (url, proc, log),
        ):
            healthz_until_every_worker(url)
            _write(table, _table("premium"))
            time.sleep(0.5)
            assert _routed(url) == "cheap"  # no polling: nothing changes without the signal
            proc.send_signal(signal.SIGHUP)
            wait_until(lambda: log.read_text().count("reloaded ") == 2, "each worker reloads", timeout=10)
            assert proc.poll() is None  # the supervisor passed the signal on and kept serving
            assert all(_routed(url) == "premium" for _ in range(20))
    finally:
        delete_namespace(REDIS_URL, namespace)
