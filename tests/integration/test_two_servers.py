"""Two payrouter processes sharing Redis: one payment is served exactly once."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from payrouter.sandbox.dev import Sandbox
from wallets import LocalSigner

from .channel_payloads import batch_offer, config_for, opening_payment, voucher_payment
from .claims import claim_pass
from .conftest import REDIS_URL, Observer
from .payments import header, offer, payment, rejection
from .servers import CLI, Servers, serve_beside


@pytest.fixture(scope="module")
def two(box: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """Two ``payrouter serve`` processes on the sandbox's Redis namespace and chain."""
    with serve_beside(box, tmp_path_factory.mktemp("two-servers"), REDIS_URL, count=2) as servers:
        yield servers


@pytest.fixture
def servers(two: Servers) -> list[str]:
    return two.urls


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
                opening_payment(quote, config, payer, chain_id=box.chain.chain_id, token_domain=box.token.domain)
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


def test_a_payer_alternating_servers_is_never_refused_as_busy(servers: list[str], box: Sandbox) -> None:
    # a voucher's charge leaves its server before its answer does: the payer's next voucher,
    # signed and sent to the other server the moment that answer arrives, finds it committed
    payer = LocalSigner.generate()
    box.token.mint(payer.address, 5_000_000)
    url = "/v1/chat/completions"

    def body() -> dict[str, Any]:
        return {"model": "gpt-4o", "max_tokens": 16, "messages": [{"role": "user", "content": secrets.token_hex(8)}]}

    def charged_after(response: httpx.Response) -> int:
        receipt = json.loads(base64.b64decode(response.headers["payment-response"]))
        return int(receipt["extra"]["channelState"]["chargedCumulativeAmount"])

    with httpx.Client(timeout=30) as http:
        first = body()
        quote = offer(http, servers[0] + url, first)
        config = config_for(batch_offer(quote), payer, salt=secrets.randbits(64))
        opening = opening_payment(quote, config, payer, chain_id=box.chain.chain_id, token_domain=box.token.domain)
        response = http.post(servers[0] + url, json=first, headers=header(opening))
        assert response.status_code == 200, response.text
        # every quote fetched first: between an answer and the next voucher there is only signing
        calls = [(servers[(i + 1) % 2], body()) for i in range(30)]
        quotes = [offer(http, server + url, b) for server, b in calls]
        for i, ((server, b), q) in enumerate(zip(calls, quotes, strict=True)):
            signed_max = charged_after(response) + int(batch_offer(q)["amount"])
            paid = voucher_payment(q, config, signed_max, payer, chain_id=box.chain.chain_id)
            response = http.post(server + url, json=b, headers=header(paid))
            assert response.status_code == 200, (i, response.text)


def test_a_server_killed_after_serving_vouchers_loses_no_charge(two: Servers, box: Sandbox) -> None:
    """Vouchers served by a process that is then killed (SIGKILL, no shutdown) are claimed by
    another: the charges live in the shared store and journal, not in the process. Runs last:
    it kills the first server."""
    payer = LocalSigner.generate()
    box.token.mint(payer.address, 5_000_000)
    url = two.urls[0] + "/v1/chat/completions"
    claim_pass(box)  # what earlier tests charged is claimed now, not below
    # the audit reads the chain from here: earlier tests paid this pay_to through routers whose
    # journals are elsewhere (private Redis servers, other namespaces)
    first_block = box.chain.w3.eth.block_number + 1
    charges: list[int] = []
    with httpx.Client(timeout=30) as http:
        config = None
        for i in range(10):
            b = {"model": "gpt-4o", "max_tokens": 64, "messages": [{"role": "user", "content": "word " * (30 * i)}]}
            q = offer(http, url, b)
            requirement = batch_offer(q)
            extra: dict[str, Any] = {}
            if config is None:
                config = config_for(requirement, payer, salt=21)
                extra = {
                    "deposit": int(requirement["extra"]["minDeposit"]),
                    "token": payer,
                    "token_domain": box.token.domain,
                }
            signed_max = sum(charges) + int(requirement["amount"])
            paid = voucher_payment(q, config, signed_max, payer, chain_id=box.chain.chain_id, **extra)
            response = http.post(url, json=b, headers=header(paid))
            assert response.status_code == 200, response.text
            charges.append(
                int(json.loads(base64.b64decode(response.headers["payment-response"]))["extra"]["chargedAmount"])
            )
    two.procs[0].kill()  # no shutdown, no drain: the process is gone
    two.procs[0].wait(10)
    operator_before = box.token.balance_of(box.operator.address)
    report = claim_pass(box)
    assert report.claimed == sum(charges) == report.settled
    assert box.token.balance_of(box.operator.address) - operator_before == sum(charges)
    # the ledger accounts for it: voucher records, the store and the chain agree
    assert box.authorizer is not None
    authorizer = box.authorizer.unsafe_export_private_key()
    audit = subprocess.run(
        [str(CLI), "ledger", "audit", "--config", str(two.config), "--from-block", str(first_block), "--json"],
        env={
            **os.environ,
            "TEST_GAS_KEY": box.gas_wallet.unsafe_export_private_key(),
            "TEST_AUTHORIZER_KEY": authorizer,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert audit.returncode == 0, audit.stdout + audit.stderr
