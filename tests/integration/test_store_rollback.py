"""Redis restarted from an older snapshot: its last writes are lost, and a payment's record is
back in a state its worker left long ago. The chain says what became of the money: a record
back at ``settling`` is answered on its replay, one back at ``serving`` is settled by the next
reconciler pass. The router's Redis is a private redis-server restarted by PID from its RDB
file; its chain RPC goes through the fault proxy."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from payrouter.app import create_app
from payrouter.chain import ChainClient
from payrouter.journal import RedisJournal, State
from payrouter.reconciler import Reconciler, Resolver
from payrouter.sandbox.dev import Sandbox
from payrouter.sandbox.rpc_faults import RpcFaultProxy, fault_proxy_in_thread
from payrouter.sandbox.serving import serve_in_thread
from payrouter.store import RedisStore
from tests.polling import wait_until
from tests.private_redis import PrivateRedis
from tests.redis_keys import journal_record
from wallets import LocalSigner

from .conftest import Observer, router_settings
from .payments import header, offer, payment, rejection

NAMESPACE = "store-rollback"


@dataclass
class Router:
    url: str
    redis: PrivateRedis
    proxy: RpcFaultProxy
    pay_to: str

    def state(self, payer: str, nonce: str) -> str:
        return journal_record(self.redis.url, NAMESPACE, payer, nonce).get("state", "")

    def snapshot(self) -> None:
        """What a restart goes back to (an RDB file; nothing written after it survives)."""
        with redis.Redis.from_url(self.redis.url) as client:
            client.save()


@pytest.fixture
def router(box: Sandbox, tmp_path: Path) -> Iterator[Router]:
    server = PrivateRedis(tmp_path)  # no AOF: a restart loads the last snapshot
    pay_to = LocalSigner.generate().address  # its own: the sandbox's audits must not see these payments
    table = box.table.model_copy(update={"pay_to": pay_to})
    try:
        server.start()
        with fault_proxy_in_thread(box.chain.rpc_url) as proxy:
            settings = router_settings(
                box, table, redis_url=server.url, namespace=NAMESPACE, rpc_url=proxy.url, receipt_timeout=2.0
            )
            with serve_in_thread(create_app(settings)) as url:
                yield Router(url, server, proxy, pay_to)
    finally:
        server.kill()


@dataclass
class Paid:
    """A funded agent's signed payment for one request to the router."""

    url: str
    body: dict[str, Any]
    payment: dict[str, Any]
    agent: LocalSigner

    @property
    def nonce(self) -> str:
        return str(self.payment["payload"]["authorization"]["nonce"])

    @property
    def amount(self) -> int:
        return int(self.payment["accepted"]["amount"])


def _paid(box: Sandbox, http: httpx.Client, router: Router) -> Paid:
    agent = LocalSigner.generate()
    box.token.mint(agent.address, 5_000_000)
    url = f"{router.url}/v1/chat/completions"
    body = {"model": "gpt-4o-mini", "max_tokens": 40, "messages": [{"role": "user", "content": secrets.token_hex(6)}]}
    return Paid(url, body, payment(offer(http, url, body), agent), agent)


def _in_background(url: str, body: dict[str, Any], paid: dict[str, Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[httpx.Response] = []

    def run() -> None:
        with httpx.Client(timeout=30) as client:
            out.append(client.post(url, json=body, headers=header(paid)))

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def _snapshot_while(router: Router, paid: Paid, state: str) -> Any:
    """Run the paid request; snapshot Redis while its record is in ``state``; its response."""
    thread, result = _in_background(paid.url, paid.body, paid.payment)
    wait_until(lambda: router.state(paid.agent.address, paid.nonce) == state, f"the record {state}")
    router.snapshot()
    thread.join(30)
    return result[0]


def test_a_record_back_at_settling_is_answered_on_its_replay(
    box: Sandbox, http: httpx.Client, observer: Observer, router: Router
) -> None:
    paid = _paid(box, http, router)
    router.proxy.set_mode("hide_receipt")  # the transfer is mined; its worker cannot see it
    pending = _snapshot_while(router, paid, State.SETTLING)  # settling, with its answer
    receipt = json.loads(base64.b64decode(pending.headers["PAYMENT-RESPONSE"]))
    assert pending.status_code == 402 and receipt["errorReason"] == "settlement_pending"
    router.proxy.set_mode("pass")
    router.redis.restart()  # back to the snapshot: settling, and no worker any more
    assert router.state(paid.agent.address, paid.nonce) == State.SETTLING
    paid_to = observer.balances(router.pay_to)[0]
    assert paid_to == paid.amount  # mined once
    again = http.post(paid.url, json=paid.body, headers=header(paid.payment))
    assert again.status_code == 200, again.text
    assert again.json()["choices"][0]["message"]["content"]
    assert router.state(paid.agent.address, paid.nonce) == State.SETTLED
    assert observer.balances(router.pay_to)[0] == paid_to  # nothing sent again


def test_a_record_back_at_serving_is_settled_by_the_next_reconciler_pass(
    box: Sandbox, http: httpx.Client, observer: Observer, router: Router
) -> None:
    paid = _paid(box, http, router)
    observer.control(delay_ms=500)
    assert _snapshot_while(router, paid, State.SERVING).status_code == 200
    router.redis.restart()  # back to serving, the answer lost with the writes after the snapshot
    assert router.state(paid.agent.address, paid.nonce) == State.SERVING

    async def reconcile() -> dict[str, int]:
        journal = RedisJournal(redis.asyncio.Redis.from_url(router.redis.url), NAMESPACE)
        store = RedisStore(router.redis.url, NAMESPACE)
        chain = ChainClient(box.chain.rpc_url)
        try:
            report = await Reconciler(Resolver(journal, chain, None), store).run_once(wait=5)  # type: ignore[arg-type]
            return report.ended or {}
        finally:
            await journal.close()
            await store.close()
            await chain.close()

    # the money moved: settled now, not when the authorization expires
    assert asyncio.run(reconcile()) == {State.SETTLED: 1}
    assert router.state(paid.agent.address, paid.nonce) == State.SETTLED
    assert observer.balances(router.pay_to)[0] == paid.amount
    # the answer was written after the snapshot: the replay says so rather than serve it twice
    assert (
        rejection(http.post(paid.url, json=paid.body, headers=header(paid.payment)))[1]
        == "invalid_exact_evm_nonce_already_used"
    )
