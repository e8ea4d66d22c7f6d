"""Two payrouter processes sharing Redis: one payment is served exactly once."""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from payrouter.sandbox.dev import Sandbox
from tests.price_toml import price_table_toml
from wallets import LocalSigner

from .channel_payloads import batch_offer, config_for, voucher_payment
from .conftest import REDIS_URL, Observer
from .payments import header, offer, payment, rejection

CLI = Path(sys.executable).parent / "payrouter"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def servers(box: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    folder = tmp_path_factory.mktemp("two-servers")
    (folder / "prices.toml").write_text(price_table_toml(box.table.model_dump(mode="json")))
    providers = "\n".join(
        f'[providers.{p}]\nbase_url = "{box.upstream_url}/v1"' for p in sorted({m.provider for m in box.table.models})
    )
    (folder / "payrouter.toml").write_text(
        f'price_table = "prices.toml"\nredis_url = "{REDIS_URL}"\nnamespace = "{box.namespace}"\n'
        f'[facilitator]\nmode = "local"\nrpc_url = "{box.chain.rpc_url}"\ngas_key_env = "TEST_GAS_KEY"\n'
        f'[channels]\nauthorizer_key_env = "TEST_AUTHORIZER_KEY"\n{providers}\n'
    )
    # faulthandler: a server that will not stop is made to print where it is stuck (SIGABRT)
    assert box.authorizer is not None
    env = {
        **os.environ,
        "TEST_GAS_KEY": box.gas_wallet.unsafe_export_private_key(),
        "TEST_AUTHORIZER_KEY": box.authorizer.unsafe_export_private_key(),
        "PYTHONFAULTHANDLER": "1",
    }
    ports = [_free_port(), _free_port()]
    # logs go to files, not pipes nobody reads (a full pipe would block the server)
    logs = [folder / f"server-{port}.log" for port in ports]
    procs = []
    for port, log in zip(ports, logs, strict=True):
        with log.open("wb") as sink:  # the child keeps its own descriptor
            procs.append(
                subprocess.Popen(
                    [str(CLI), "serve", "--config", str(folder / "payrouter.toml"), "--port", str(port)],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=sink,
                )
            )
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        deadline = time.monotonic() + 30
        for url, proc in zip(urls, procs, strict=True):
            while True:
                assert proc.poll() is None, _log_tail(logs[procs.index(proc)])
                try:
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "server did not become healthy"
                time.sleep(0.05)
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc, log in zip(procs, logs, strict=True):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGABRT)
                proc.wait(10)
                pytest.fail(f"payrouter serve did not stop on SIGTERM within 10 s:\n{_log_tail(log)}")


def _log_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-6000:]


def test_gas_key_never_logged(servers: list[str], box: Sandbox) -> None:
    # a config error message path: nothing secret in /healthz or the OpenAPI document either
    for url in servers:
        for path in ("/healthz", "/openapi.json", "/v1/models"):
            text = httpx.get(url + path).text
            assert box.gas_wallet.unsafe_export_private_key()[2:] not in text


def test_one_payment_two_servers_concurrently(servers: list[str], box: Sandbox, observer: Observer) -> None:
    agent = box.agents[4]
    rounds = 6
    # both copies must be in flight together (a copy arriving after the first settled would get
    # the kept answer back, which is a replay, not a second service)
    observer.control(delay_ms=150)
    with httpx.Client(timeout=30) as http, ThreadPoolExecutor(max_workers=2) as pool:
        before = observer.balances(agent.address, box.operator.address)
        calls = observer.upstream_calls()
        total = 0
        for _ in range(rounds):
            body = {"model": "auto", "max_tokens": 32, "messages": [{"role": "user", "content": secrets.token_hex(8)}]}
            o = offer(http, f"{servers[0]}/v1/chat/completions", body)  # quoted on one, stored in shared Redis
            total += int(o["accepts"][0]["amount"])
            paid = header(payment(o, agent))
            results = list(
                pool.map(
                    lambda url, body=body, paid=paid: http.post(f"{url}/v1/chat/completions", json=body, headers=paid),
                    servers,
                )
            )
            statuses = sorted(r.status_code for r in results)
            assert statuses == [200, 402], [r.text for r in results]
            loser = next(r for r in results if r.status_code == 402)
            assert rejection(loser) == (402, "invalid_exact_evm_nonce_already_used")
        assert observer.upstream_calls() == calls + rounds
        after = observer.balances(agent.address, box.operator.address)
        assert (before[0] - after[0], after[1] - before[1]) == (total, total)


def test_distinct_payments_on_both_servers_share_the_gas_wallet(
    servers: list[str], box: Sandbox, observer: Observer
) -> None:
    agent = box.agents[5]
    n = 8
    with httpx.Client(timeout=30) as http, ThreadPoolExecutor(max_workers=8) as pool:
        jobs = []
        total = 0
        for i in range(n):
            body = {"model": "auto", "max_tokens": 16, "messages": [{"role": "user", "content": secrets.token_hex(8)}]}
            o = offer(http, f"{servers[i % 2]}/v1/chat/completions", body)
            total += int(o["accepts"][0]["amount"])
            jobs.append((servers[(i + 1) % 2], body, header(payment(o, agent))))
        before = observer.balances(agent.address, box.operator.address)
        results = list(pool.map(lambda j: http.post(f"{j[0]}/v1/chat/completions", json=j[1], headers=j[2]), jobs))
        assert [r.status_code for r in results] == [200] * n, [r.text for r in results if r.status_code != 200]
        after = observer.balances(agent.address, box.operator.address)
        assert (before[0] - after[0], after[1] - before[1]) == (total, total)


def test_one_channel_two_servers_serves_one_request_at_a_time(
    servers: list[str], box: Sandbox, observer: Observer
) -> None:
    payer = LocalSigner.generate()
    box.token.mint(payer.address, 5_000_000)
    url = "/v1/chat/completions"

    def body() -> dict[str, Any]:
        return {"model": "gpt-4o", "max_tokens": 32, "messages": [{"role": "user", "content": secrets.token_hex(8)}]}

    with httpx.Client(timeout=30) as http, ThreadPoolExecutor(max_workers=2) as pool:
        first = body()
        quote = offer(http, servers[0] + url, first)
        requirement = batch_offer(quote)
        config = config_for(requirement, payer)
        opened = http.post(
            servers[0] + url,
            json=first,
            headers=header(
                voucher_payment(
                    quote,
                    config,
                    int(requirement["amount"]),
                    payer,
                    chain_id=box.chain.chain_id,
                    deposit=int(requirement["extra"]["minDeposit"]),
                    token=payer,
                    token_domain=box.token.domain,
                )
            ),
        )
        assert opened.status_code == 200, opened.text
        charged = int(json.loads(base64.b64decode(opened.headers["payment-response"]))["extra"]["chargedAmount"])
        observer.control(delay_ms=200)  # both requests in flight together
        try:
            for _ in range(4):
                bodies = [body(), body()]
                paid = []
                for server, b in zip(servers, bodies, strict=True):
                    q = offer(http, server + url, b)
                    signed_max = charged + int(batch_offer(q)["amount"])
                    paid.append(voucher_payment(q, config, signed_max, payer, chain_id=box.chain.chain_id))
                calls = observer.upstream_calls()
                results = list(
                    pool.map(
                        lambda server, b, p: http.post(server + url, json=b, headers=header(p)), servers, bodies, paid
                    )
                )
                assert sorted(r.status_code for r in results) == [200, 402], [r.text for r in results]
                loser = next(r for r in results if r.status_code == 402)
                assert rejection(loser) == (402, "invalid_batch_settlement_evm_channel_busy")
                assert observer.upstream_calls() == calls + 1  # exactly one model call
                winner = next(r for r in results if r.status_code == 200)
                charged += int(
                    json.loads(base64.b64decode(winner.headers["payment-response"]))["extra"]["chargedAmount"]
                )
        finally:
            observer.control(delay_ms=0)
