"""Redis killed (by PID) under paid streams: every stream in flight ends settled or recorded owed,
never answered for free with no trace (D1). The router runs on a private redis-server with AOF."""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from pydantic import SecretStr

from payrouter.app import create_app
from payrouter.chain import ChainClient
from payrouter.facilitator import LocalFacilitator
from payrouter.journal import RedisJournal, State
from payrouter.reconciler import Reconciler, Resolver
from payrouter.sandbox.dev import Sandbox
from payrouter.sandbox.serving import serve_in_thread
from payrouter.settings import ProviderSettings, Settings
from payrouter.store import RedisStore
from pricing import StreamingPolicy
from tests.polling import wait_until
from tests.private_redis import PrivateRedis
from tests.redis_keys import journal_record
from wallets import LocalSigner

from .conftest import Observer, authorizer_key
from .payments import header, offer, payment

NAMESPACE = "store-faults"


@dataclass
class Router:
    url: str
    redis: PrivateRedis
    gas: LocalSigner

    def record(self, payer: str, nonce: str) -> dict[str, str]:
        return journal_record(self.redis.url, NAMESPACE, payer, nonce)

    def wait_for(self, agent: LocalSigner, job: dict[str, Any], state: str, timeout: float = 5) -> None:
        nonce = _nonce(job)
        wait_until(lambda: self.record(agent.address, nonce).get("state") == state, f"record {state}", timeout)


@pytest.fixture
def router(box: Sandbox, tmp_path: Path) -> Iterator[Router]:
    server = PrivateRedis(tmp_path, appendonly=True)
    gas = box.chain.new_account()
    # its own pay_to: these payments are journaled in the private Redis, not the sandbox's, and
    # an audit of the sandbox's pay_to (tests/integration/test_two_servers.py) must not see them
    table = box.table.model_copy(
        update={"streaming": StreamingPolicy(unconfirmed_seconds=2), "pay_to": LocalSigner.generate().address}
    )
    try:
        server.start()
        settings = Settings(
            price_table=table,
            providers={
                p: ProviderSettings(base_url=f"{box.upstream_url}/v1") for p in {m.provider for m in table.models}
            },
            redis_url=server.url,
            namespace=NAMESPACE,
            rpc_url=box.chain.rpc_url,
            gas_key=SecretStr(gas.unsafe_export_private_key()),
            channel_authorizer_key=authorizer_key(box),
            reconcile_interval=0,
        )
        with serve_in_thread(create_app(settings)) as url:
            yield Router(url, server, gas)
    finally:
        server.kill()


def _streams(router: Router, box: Sandbox, http: httpx.Client, n: int) -> list[tuple[LocalSigner, dict[str, Any], int]]:
    out = []
    url = f"{router.url}/v1/chat/completions"
    for _ in range(n):
        agent = LocalSigner.generate()
        box.token.mint(agent.address, 5_000_000)
        body = {
            "model": "gpt-4o-mini",
            "stream": True,
            "max_tokens": 60,
            "messages": [{"role": "user", "content": f"s {secrets.token_hex(6)}"}],
        }
        o = offer(http, url, body)
        out.append((agent, {"body": body, "payment": payment(o, agent)}, int(o["accepts"][0]["amount"])))
    return out


class _Streams:
    """The jobs' paid streams, each in its own thread."""

    def __init__(self, url: str, jobs: list[tuple[LocalSigner, dict[str, Any], int]]) -> None:
        self.responses: list[httpx.Response] = []
        results: list[httpx.Response | None] = [None] * len(jobs)

        def one(i: int) -> None:
            job = jobs[i][1]
            with httpx.Client(timeout=30) as client:
                results[i] = client.post(f"{url}/v1/chat/completions", json=job["body"], headers=header(job["payment"]))

        self._results = results
        self._threads = [threading.Thread(target=one, args=(i,)) for i in range(len(jobs))]
        for thread in self._threads:
            thread.start()

    def join(self) -> list[httpx.Response]:
        for thread in self._threads:
            thread.join(30)
        assert all(r is not None for r in self._results), "a stream did not finish"
        return [r for r in self._results if r is not None]


def _last_event(text: str) -> tuple[str | None, dict[str, Any]]:
    block = text.strip().split("\n\n")[-1]
    name = None
    data: dict[str, Any] = {}
    for line in block.splitlines():
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data = json.loads(line[5:])
    return name, data


def _nonce(job: dict[str, Any]) -> str:
    return str(job["payment"]["payload"]["authorization"]["nonce"])


def test_redis_dies_before_the_first_chunk_and_returns_in_time(
    router: Router, box: Sandbox, http: httpx.Client, observer: Observer
) -> None:
    jobs = _streams(router, box, http, 4)
    observer.control(delay_ms=600, chunk_delay_ms=30)
    streams = _Streams(router.url, jobs)
    for agent, job, _amount in jobs:  # verified and recorded; the model has not answered yet
        router.wait_for(agent, job, State.SERVING)
    router.redis.kill()
    time.sleep(1.0)  # the streams' first chunks arrive while Redis is down
    router.redis.start()
    responses = streams.join()
    for (agent, job, amount), response in zip(jobs, responses, strict=True):
        assert response.status_code == 200, response.text
        name, receipt = _last_event(response.text)
        assert name == "x402.payment" and receipt["success"] is True, response.text[-400:]
        assert box.token.balance_of(agent.address) == 5_000_000 - amount
        router.wait_for(agent, job, State.SETTLED)
        # the answer is kept: the same payment fetches it
        again = http.post(f"{router.url}/v1/chat/completions", json=job["body"], headers=header(job["payment"]))
        assert again.status_code == 200, again.text
        assert _last_event(again.text)[1]["transaction"] == receipt["transaction"]


def test_redis_down_too_long_cuts_streams_they_are_owed_then_collected(
    router: Router, box: Sandbox, http: httpx.Client, observer: Observer
) -> None:
    jobs = _streams(router, box, http, 4)
    observer.control(delay_ms=600, chunk_delay_ms=30)
    streams = _Streams(router.url, jobs)
    for agent, job, _amount in jobs:  # verified and recorded; the model has not answered yet
        router.wait_for(agent, job, State.SERVING)
    router.redis.kill()
    responses = streams.join()  # unconfirmed_seconds (2 s) pass without Redis: nothing can be recorded
    for (agent, _job, _amount), response in zip(jobs, responses, strict=True):
        assert response.status_code == 200
        events = response.text.strip().split("\n\n")
        assert "payment_error" in events[-2] and "cut" in events[-2]
        assert _last_event(response.text)[1]["success"] is False
        assert box.token.balance_of(agent.address) == 5_000_000  # nothing moved yet
    router.redis.start()
    # the cut streams' records land once Redis is back: owed, with the payer
    for agent, job, _amount in jobs:
        router.wait_for(agent, job, State.OWED, timeout=15)

    async def collect() -> dict[str, int]:
        journal = RedisJournal(redis.asyncio.Redis.from_url(router.redis.url), NAMESPACE)
        store = RedisStore(router.redis.url, NAMESPACE)
        chain = ChainClient(box.chain.rpc_url)
        facilitator = LocalFacilitator(ChainClient(box.chain.rpc_url), router.gas, store, box.chain.chain_id)
        try:
            report = await Reconciler(Resolver(journal, chain, facilitator), store).run_once(wait=5)
            return report.ended or {}
        finally:
            for closing in (journal, store, chain, facilitator):
                await closing.close()

    ended = asyncio.run(collect())
    assert ended.get(State.SETTLED) == 4
    for agent, job, amount in jobs:
        assert router.record(agent.address, _nonce(job))["state"] == State.SETTLED
        assert box.token.balance_of(agent.address) == 5_000_000 - amount
