"""A voucher's answer waits for one store round trip (the reservation), not for the replies to
the charge it writes: those are read after the answer has gone, yet the charge is already in
the store when the answer arrives.

A `payrouter serve` process talks to Redis through a proxy that holds every reply back for a
while: each store round trip the answer waits on costs that delay, so the answer's time counts
them, whatever the speed of the machine.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from payrouter.sandbox.dev import Sandbox
from payrouter.store import keys
from tests.delay_proxy import DelayProxy
from tests.price_toml import price_table_toml
from wallets import LocalSigner

from .channel_payloads import batch_offer, config_for, voucher_payment
from .conftest import REDIS_URL
from .payments import header, offer

CLI = Path(sys.executable).parent / "payrouter"
DELAY = 1.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def slow_store(box: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, DelayProxy]]:
    """A server on the sandbox's chain and namespace whose Redis replies come through the proxy."""
    proxy = DelayProxy("127.0.0.1", 6379)
    proxy.start()
    folder = tmp_path_factory.mktemp("slow-store")
    (folder / "prices.toml").write_text(price_table_toml(box.table.model_dump(mode="json")))
    providers = "\n".join(
        f'[providers.{p}]\nbase_url = "{box.upstream_url}/v1"' for p in sorted({m.provider for m in box.table.models})
    )
    (folder / "payrouter.toml").write_text(
        f'price_table = "prices.toml"\nredis_url = "redis://127.0.0.1:{proxy.port}/0"\n'
        f'namespace = "{box.namespace}"\n'
        f'[facilitator]\nmode = "local"\nrpc_url = "{box.chain.rpc_url}"\ngas_key_env = "TEST_GAS_KEY"\n'
        f'[channels]\nauthorizer_key_env = "TEST_AUTHORIZER_KEY"\nclaim_poll = 0\n{providers}\n'
    )
    assert box.authorizer is not None
    env = {
        **os.environ,
        "TEST_GAS_KEY": box.gas_wallet.unsafe_export_private_key(),
        "TEST_AUTHORIZER_KEY": box.authorizer.unsafe_export_private_key(),
    }
    port = _free_port()
    log = folder / "server.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [str(CLI), "serve", "--config", str(folder / "payrouter.toml"), "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text(errors="replace")[-4000:]
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not become healthy"
            time.sleep(0.05)
        yield f"{url}/v1/chat/completions", proxy
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        proxy.stop()


def _body() -> dict[str, Any]:
    return {"model": "gpt-4o", "max_tokens": 40, "messages": [{"role": "user", "content": secrets.token_hex(4)}]}


def _charged(response: httpx.Response) -> int:
    receipt = json.loads(base64.b64decode(response.headers["payment-response"]))
    return int(receipt["extra"]["channelState"]["chargedCumulativeAmount"])


def test_the_answer_waits_for_the_reservation_only(box: Sandbox, slow_store: tuple[str, DelayProxy]) -> None:
    url, proxy = slow_store
    payer = LocalSigner.generate()
    box.token.mint(payer.address, 10_000_000)
    with httpx.Client(timeout=30) as http, redis.Redis.from_url(REDIS_URL) as store:
        body = _body()
        quote = offer(http, url, body)
        requirement = batch_offer(quote)
        config = config_for(requirement, payer, salt=secrets.randbits(64))
        deposit = int(requirement["extra"]["minDeposit"])
        first = voucher_payment(
            quote,
            config,
            int(requirement["amount"]),
            payer,
            chain_id=box.chain.chain_id,
            deposit=deposit,
            token=payer,
            token_domain=box.token.domain,
        )
        response = http.post(url, json=body, headers=header(first))
        assert response.status_code == 200, response.text
        charged = _charged(response)
        key = f"{box.namespace}:{keys.channel('0x' + config.channel_id(box.chain.chain_id).hex())}"
        for _ in range(3):
            body = _body()
            quote = offer(http, url, body)  # untimed: the quote's own store reads happen here
            payment = voucher_payment(
                quote, config, charged + int(batch_offer(quote)["amount"]), payer, chain_id=box.chain.chain_id
            )
            proxy.reply_delay = DELAY
            try:
                started = time.monotonic()
                response = http.post(url, json=body, headers=header(payment))
                took = time.monotonic() - started
                # read straight from Redis, not through the proxy, as soon as the answer is in
                stored = store.hmget(key, "charged", "pending")
            finally:
                proxy.reply_delay = 0.0
            assert response.status_code == 200, response.text
            assert stored == [str(_charged(response)).encode(), b""], stored
            # one held reply (the reservation's) before the answer; the commit's and the
            # journal's replies are read after it (waiting for them too would take 2 x DELAY)
            assert DELAY <= took < 1.6 * DELAY, took
            charged = _charged(response)
