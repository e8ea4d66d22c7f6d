"""One payment buys one answer, even when copies of it arrive at the same router at once."""

from __future__ import annotations

import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from payrouter.sandbox.dev import Sandbox
from wallets import LocalSigner

from .conftest import Observer
from .payments import header, offer, payment, rejection

COPIES = 8


def test_parallel_copies_of_one_payment_are_served_once(box: Sandbox, http: httpx.Client, observer: Observer) -> None:
    url = f"{box.router_url}/v1/chat/completions"
    payer = LocalSigner.generate()
    box.token.mint(payer.address, 5_000_000)  # plenty: only single use can stop the copies
    body = {"model": "auto", "max_tokens": 24, "messages": [{"role": "user", "content": secrets.token_hex(8)}]}
    o = offer(http, url, body)
    quote, pay_to = int(o["accepts"][0]["amount"]), o["accepts"][0]["payTo"]
    assert quote > 0 and pay_to == box.operator.address
    paid = header(payment(o, payer))
    before = observer.balances(payer.address, pay_to)
    calls = observer.upstream_calls()
    observer.control(delay_ms=400)  # the copy that gets through holds the model call open

    start = threading.Barrier(COPIES)

    def send(_: int) -> tuple[httpx.Response, float]:
        with httpx.Client(timeout=30) as client:
            start.wait(10)
            response = client.post(url, json=body, headers=paid)
            return response, time.monotonic()

    with ThreadPoolExecutor(max_workers=COPIES) as pool:
        results = list(pool.map(send, range(COPIES)))

    statuses = sorted(r.status_code for r, _ in results)
    assert statuses == [200] + [402] * (COPIES - 1), [r.text for r, _ in results]
    (winner, won_at), *_ = [(r, t) for r, t in results if r.status_code == 200]
    losers = [(r, t) for r, t in results if r.status_code == 402]
    assert winner.json()["choices"][0]["message"]["content"]
    for loser, _ in losers:
        assert rejection(loser) == (402, "invalid_exact_evm_nonce_already_used")
        assert "choices" not in loser.text
    # the copies were refused while the winner was still in its (slow) model call
    assert max(t for _, t in losers) < won_at
    assert observer.upstream_calls() == calls + 1
    after = observer.balances(payer.address, pay_to)
    assert before[0] - after[0] == quote, "the payer paid exactly the quote, once"
    assert after[1] - before[1] == quote, "pay_to received exactly the quote, once"
