"""Paid-path benchmark: payrouter vs the official x402 PaymentMiddlewareASGI, same endpoint.

Usage: .venv/bin/python bench/paid_path.py [--paid 200] [--seconds 3] [--concurrency 16]

Both servers run in their own processes, call the same deterministic upstream (its own
process) and settle every payment on the same anvil chain (automine):

* payrouter: `create_app` with the local facilitator and the Redis store.
* official: a Starlette app whose route calls the same upstream, behind x402's
  `PaymentMiddlewareASGI` with `x402ResourceServer` over the in-process `x402Facilitator`
  (`FacilitatorWeb3Signer`), priced at payrouter's quote for the same request.

Reported per server: unpaid-402 requests per second (closed loop, `--concurrency` connections,
driven by wrk when installed (`apt-get install wrk`), else by an httpx client)
and the latency of paid calls (p50/p99 over `--paid` sequential calls; the client signs
before the clock starts, so the figure is the server's verify + model call + settlement).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from typing import Any

import httpx

from bench.timing import percentile
from payrouter.client import build_payment_header, read_offer
from payrouter.devchain import DevChain
from payrouter.sandbox.dev import EXAMPLE_TABLE
from pricing import load_price_table
from wallets import LocalSigner

REDIS_URL = "redis://127.0.0.1:6379/0"
BODY: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "benchmark me"}],
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _serve_upstream(port: int) -> None:
    import uvicorn

    from payrouter.sandbox.upstream import TestUpstream

    uvicorn.run(TestUpstream().app, host="127.0.0.1", port=port, log_level="error", access_log=False)


def _serve_payrouter(port: int, table_json: str, rpc_url: str, gas_key: str, upstream: str, namespace: str) -> None:
    import uvicorn
    from pydantic import SecretStr

    from payrouter.app import create_app
    from payrouter.settings import ProviderSettings, Settings
    from pricing import parse_price_table

    table = parse_price_table(json.loads(table_json))
    settings = Settings(
        price_table=table,
        providers={p: ProviderSettings(base_url=f"{upstream}/v1") for p in {m.provider for m in table.models}},
        redis_url=REDIS_URL,
        namespace=namespace,
        facilitator="local",
        rpc_url=rpc_url,
        gas_key=SecretStr(gas_key),
    )
    uvicorn.run(create_app(settings), host="127.0.0.1", port=port, log_level="error", access_log=False)


def _serve_official(
    port: int, rpc_url: str, gas_key: str, upstream: str, network: str, asset: str, pay_to: str, amount: int
) -> None:
    import uvicorn
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response

    from tests.integration.official_server import official_app

    client = httpx.AsyncClient(timeout=30)

    async def chat(request: Request) -> Response:
        body = await request.json()
        reply = await client.post(f"{upstream}/v1/chat/completions", json={**body, "model": "gpt-4o-mini"})
        return JSONResponse(reply.json(), reply.status_code)

    app = official_app(rpc_url, gas_key, network, asset, pay_to, amount, ("POST", "/v1/chat/completions", chat))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", access_log=False)


async def _wait(url: str) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(600):
            try:
                await http.get(url, timeout=0.5)
                return
            except httpx.HTTPError:
                await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


def _wrk_rps(url: str, seconds: float, concurrency: int) -> float | None:
    """Unpaid-402 throughput measured by wrk (a C load generator), when installed."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = [[{json.dumps(BODY)}]]\n"
        )
    out = subprocess.run(
        [wrk, "-t2", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "-s", script.name, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    os.unlink(script.name)
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    assert match and non2xx and total and non2xx.group(1) == total.group(1), out  # every answer was a 402
    return float(match.group(1))


async def _unpaid_rps(url: str, seconds: float, concurrency: int) -> float:
    measured = await asyncio.to_thread(_wrk_rps, url, seconds, concurrency)
    if measured is not None:
        return measured
    count = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:

        async def loop() -> None:
            nonlocal count
            while time.perf_counter() < deadline:
                response = await http.post(url, json=BODY)
                assert response.status_code == 402, response.text
                count += 1

        start = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        return count / (time.perf_counter() - start)


async def _paid_latencies(url: str, agent: LocalSigner, n: int) -> list[float]:
    out = []
    async with httpx.AsyncClient(timeout=30) as http:
        for i in range(n + 5):
            body = {**BODY, "messages": [{"role": "user", "content": f"benchmark {secrets.token_hex(4)}"}]}
            offer = read_offer((await http.post(url, json=body)).headers).body
            header, _ = build_payment_header(offer, agent, max_amount=10**6)
            start = time.perf_counter()
            response = await http.post(url, json=body, headers={"PAYMENT-SIGNATURE": header})
            elapsed = (time.perf_counter() - start) * 1000
            assert response.status_code == 200, response.text
            assert "payment-response" in response.headers
            if i >= 5:  # warm-up
                out.append(elapsed)
    return out


async def _measure(name: str, url: str, agent: LocalSigner, args: argparse.Namespace) -> dict[str, float]:
    await _wait(url)
    rps = await _unpaid_rps(url, args.seconds, args.concurrency)
    lat = await _paid_latencies(url, agent, args.paid)
    result = {
        "unpaid_402_rps": rps,
        "paid_p50_ms": statistics.median(lat),
        "paid_p99_ms": percentile(lat, 0.99),
        "paid_mean_ms": statistics.fmean(lat),
    }
    print(
        f"{name:<10} unpaid 402: {rps:7.0f} req/s   paid: p50 {result['paid_p50_ms']:6.2f} ms"
        f"  p99 {result['paid_p99_ms']:6.2f} ms  mean {result['paid_mean_ms']:6.2f} ms  (n={len(lat)})",
        flush=True,
    )
    return result


def delete_namespace(namespace: str) -> None:
    """Remove every Redis key a bench run left under ``namespace`` (journal records, quotes)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{namespace}:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--paid", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()

    spawn = multiprocessing.get_context("spawn")
    with DevChain.start() as chain:
        base = load_price_table(EXAMPLE_TABLE)
        token = chain.deploy_token()
        operator = LocalSigner.generate()
        table = base.on_chain(chain.network, token.address, operator.address)
        agents = [LocalSigner.generate(), LocalSigner.generate()]
        for agent in agents:
            token.mint(agent.address, 10**12)
        ports = {name: _free_port() for name in ("upstream", "payrouter", "official")}
        upstream = f"http://127.0.0.1:{ports['upstream']}"
        from pricing import estimate_chat_input_tokens, quote_route

        amount = quote_route(table, "gpt-4o-mini", estimate_chat_input_tokens(BODY["messages"]), 64).amount
        namespace = f"payrouter-bench-{secrets.token_hex(4)}"
        procs = [
            spawn.Process(target=_serve_upstream, args=(ports["upstream"],), daemon=True),
            spawn.Process(
                target=_serve_payrouter,
                args=(
                    ports["payrouter"],
                    table.model_dump_json(),
                    chain.rpc_url,
                    chain.new_account().unsafe_export_private_key(),
                    upstream,
                    namespace,
                ),
                daemon=True,
            ),
            spawn.Process(
                target=_serve_official,
                args=(
                    ports["official"],
                    chain.rpc_url,
                    chain.new_account().unsafe_export_private_key(),
                    upstream,
                    chain.network,
                    token.address,
                    operator.address,
                    amount,
                ),
                daemon=True,
            ),
        ]
        for proc in procs:
            proc.start()
        try:
            before = token.balance_of(operator.address)
            ours = asyncio.run(
                _measure("payrouter", f"http://127.0.0.1:{ports['payrouter']}/v1/chat/completions", agents[0], args)
            )
            theirs = asyncio.run(
                _measure("official", f"http://127.0.0.1:{ports['official']}/v1/chat/completions", agents[1], args)
            )
            settled = token.balance_of(operator.address) - before
            assert settled == amount * 2 * (args.paid + 5), "every paid call must have settled exactly once"
            print(
                f"ratio      unpaid rps x{ours['unpaid_402_rps'] / theirs['unpaid_402_rps']:.2f}   "
                f"paid p50 x{theirs['paid_p50_ms'] / ours['paid_p50_ms']:.2f} faster   "
                f"paid p99 x{theirs['paid_p99_ms'] / ours['paid_p99_ms']:.2f} faster"
            )
            print(json.dumps({"payrouter": ours, "official": theirs, "amount": amount}))
        finally:
            for proc in procs:
                proc.terminate()
                proc.join(5)
            delete_namespace(namespace)


if __name__ == "__main__":
    main()
