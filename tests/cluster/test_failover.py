"""A Redis Cluster master stopped (SIGKILL by PID) under continuous paid traffic: requests in flight
fail closed (nothing served unpaid, nothing charged twice) and service resumes once its replica is
promoted. The router runs in the sandbox on a cluster of its own (cluster-node-timeout 1 s)."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from payrouter.sandbox.cluster import LocalCluster
from payrouter.sandbox.dev import Sandbox
from tests.cluster import delete_keys
from tests.integration.payments import header, offer, payment
from tests.polling import wait_until
from tests.redis_keys import run_token
from tests.sandbox_thread import sandbox_in_thread
from wallets import LocalSigner

log = logging.getLogger(__name__)

AGENTS = 4
FUNDS = 50_000_000


@dataclass
class Attempt:
    """One paid request: the payment, and every answer the router gave it."""

    agent: LocalSigner
    body: dict[str, Any]
    payment: dict[str, Any]
    amount: int
    statuses: list[int] = field(default_factory=list)
    served: httpx.Response | None = None

    @property
    def nonce(self) -> bytes:
        return bytes.fromhex(str(self.payment["payload"]["authorization"]["nonce"])[2:])


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(node_timeout_ms=1000) as c:
        yield c


@pytest.fixture(scope="module")
def box(cluster: LocalCluster) -> Iterator[Sandbox]:
    namespace = f"payrouter-test-failover-{run_token()}"
    try:
        with sandbox_in_thread(agents=1, redis_url=cluster.url, namespace=namespace) as sb:
            yield sb
    finally:
        delete_keys(cluster.url, namespace)


def _send(http: httpx.Client, url: str, attempt: Attempt) -> None:
    try:
        response = http.post(url, json=attempt.body, headers=header(attempt.payment))
    except httpx.HTTPError:
        attempt.statuses.append(0)
        return
    attempt.statuses.append(response.status_code)
    if response.status_code == 200:
        attempt.served = response
    else:  # failing closed: no answer goes out on a payment that is not settled
        assert "choices" not in response.text, response.text


def _traffic(box: Sandbox, agent: LocalSigner, stop: threading.Event, out: list[Attempt]) -> None:
    """A closed loop of paid calls (a fresh request and payment each) until ``stop``."""
    url = f"{box.router_url}/v1/chat/completions"
    with httpx.Client(timeout=30) as http:
        while not stop.is_set():
            body = {
                "model": "gpt-4o-mini",
                "max_tokens": 16,
                "messages": [{"role": "user", "content": secrets.token_hex(6)}],
            }
            try:
                o = offer(http, url, body)
            except (AssertionError, httpx.HTTPError):  # the quote itself may fail while the master is gone
                time.sleep(0.02)
                continue
            attempt = Attempt(agent, body, payment(o, agent), int(o["accepts"][0]["amount"]))
            out.append(attempt)
            _send(http, url, attempt)


def test_a_master_killed_mid_traffic_fails_closed_and_service_resumes(cluster: LocalCluster, box: Sandbox) -> None:
    agents = [LocalSigner.generate() for _ in range(AGENTS)]
    for agent in agents:
        box.token.mint(agent.address, FUNDS)
    # the journal's slot: every paid call writes there, so every call in flight meets the kill
    victim = cluster.master_of(f"{box.namespace}:{{j}}:open")
    attempts: list[list[Attempt]] = [[] for _ in agents]
    stop = threading.Event()
    threads = [
        threading.Thread(target=_traffic, args=(box, agent, stop, out), daemon=True)
        for agent, out in zip(agents, attempts, strict=True)
    ]
    for thread in threads:
        thread.start()
    wait_until(
        lambda: sum(a.served is not None for out in attempts for a in out) >= 8, "paid calls before the kill", 60
    )
    cluster.kill(victim)
    killed_at = time.monotonic()
    promoted = cluster.wait_for_failover(victim, f"{box.namespace}:{{j}}:open", timeout=30)
    failover_s = time.monotonic() - killed_at
    served_before = sum(a.served is not None for out in attempts for a in out)
    # traffic goes on on the promoted replica
    wait_until(
        lambda: sum(a.served is not None for out in attempts for a in out) >= served_before + 8,
        "paid calls after the failover",
        60,
    )
    stop.set()
    for thread in threads:
        thread.join(30)
    assert promoted is not victim

    everything = [a for out in attempts for a in out]
    failed = [a for a in everything if a.served is None]
    assert failed, "no request met the failover: the test proved nothing"
    # a payer whose request failed presents the same payment again: it is served then (its
    # money moved, or it moves now) or refused with nothing moved; never charged without an answer
    with httpx.Client(timeout=30) as http:
        for attempt in failed:
            _send(http, f"{box.router_url}/v1/chat/completions", attempt)

    for agent, out in zip(agents, attempts, strict=True):
        served = [a for a in out if a.served is not None]
        spent = FUNDS - box.token.balance_of(agent.address)
        # nothing charged twice, nothing charged unserved: the chain's spend is the served charges
        assert spent == sum(a.amount for a in served), (spent, [(a.statuses, a.amount) for a in out])
        for attempt in served:  # nothing served unpaid: every answer's payment is settled on chain
            assert box.token.authorization_state(agent.address, attempt.nonce)
            assert attempt.served is not None and attempt.served.headers.get("PAYMENT-RESPONSE")
        for attempt in out:
            if attempt.served is None:
                assert not box.token.authorization_state(agent.address, attempt.nonce)
    # a later paid call succeeds
    with httpx.Client(timeout=30) as http:
        later = Attempt(
            agents[0],
            {"model": "gpt-4o-mini", "max_tokens": 8, "messages": [{"role": "user", "content": "after"}]},
            {},
            0,
        )
        o = offer(http, f"{box.router_url}/v1/chat/completions", later.body)
        later.payment = payment(o, agents[0])
        _send(http, f"{box.router_url}/v1/chat/completions", later)
        assert later.statuses[-1] == 200
    log.info(
        f"failover {failover_s:.1f} s; {len(everything)} paid requests, {len(failed)} failed during it "
        f"({sorted({s for a in failed for s in a.statuses[:1]})}), all settled or untouched on chain"
    )
