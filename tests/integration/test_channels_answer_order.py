"""A voucher's answer waits for one store round trip (the reservation), not for the replies to
the charge it writes: those are read after the answer has gone, and the charge, which left
before the answer, reaches the store (past the proxy's own hop: the same-instant guarantee
without a proxy is tests/integration/test_two_servers.py's alternating payer).

A `payrouter serve` process talks to Redis through a proxy that holds every reply back for a
while: each store round trip the answer waits on costs that delay, so the answer's time counts
them, whatever the speed of the machine.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from payrouter.sandbox.dev import Sandbox
from payrouter.store import keys
from tests.delay_proxy import DelayProxy
from wallets import LocalSigner

from .channel_payloads import batch_offer, config_for, opening_payment, voucher_payment
from .channel_reads import fields_once_charged
from .conftest import REDIS_URL
from .payments import header, offer
from .servers import serve_beside

DELAY = 1.0


@pytest.fixture(scope="module")
def slow_store(box: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, DelayProxy]]:
    """A server on the sandbox's chain and namespace whose Redis replies come through the proxy."""
    proxy = DelayProxy("127.0.0.1", 6379)
    proxy.start()
    try:
        redis_url = f"redis://127.0.0.1:{proxy.port}/0"
        with serve_beside(box, tmp_path_factory.mktemp("slow-store"), redis_url) as server:
            yield f"{server.urls[0]}/v1/chat/completions", proxy
    finally:
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
        first = opening_payment(quote, config, payer, chain_id=box.chain.chain_id, token_domain=box.token.domain)
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
                # read straight from Redis, not through the proxy, once the proxy has passed the
                # charge on (it left the server before the answer did)
                stored = fields_once_charged(store, key, _charged(response), "pending")
            finally:
                proxy.reply_delay = 0.0
            assert response.status_code == 200, response.text
            assert stored == [str(_charged(response)).encode(), b""], stored
            # one held reply (the reservation's) before the answer; the commit's and the
            # journal's replies are read after it (waiting for them too would take 2 x DELAY)
            assert DELAY <= took < 1.6 * DELAY, took
            charged = _charged(response)
