"""Settlement under faults, as they happen: a JSON-RPC proxy loses replies and hides receipts,
payers cancel their authorizations mid-stream. Money that moved always has a record and an answer."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis
from pydantic import SecretStr

from payrouter.app import create_app
from payrouter.chain import ChainClient
from payrouter.chat import request_digest
from payrouter.facilitator import LocalFacilitator
from payrouter.journal import PaymentRecord, RedisJournal, State
from payrouter.reconciler import Reconciler, Resolver
from payrouter.sandbox.dev import Sandbox
from payrouter.sandbox.rpc_faults import RpcFaultProxy, fault_proxy_in_thread
from payrouter.sandbox.serving import serve_in_thread
from payrouter.settings import ProviderSettings, Settings
from payrouter.store import RedisStore
from tests.redis_keys import delete_namespace, journal_record, run_token
from wallets import CancelAuthorization, Eip712Domain, LocalSigner, new_nonce

from .conftest import REDIS_URL, Observer, authorizer_key
from .payments import header, offer, payment, rejection, sse_events


@dataclass
class Faulty:
    """A router whose chain RPC goes through a fault proxy, with its own journal namespace."""

    url: str
    proxy: RpcFaultProxy
    namespace: str
    gas: LocalSigner

    def record(self, payer: str, nonce: str) -> dict[str, str]:
        return journal_record(REDIS_URL, self.namespace, payer, nonce)


@pytest.fixture(scope="module")
def faulty(box: Sandbox) -> Iterator[Faulty]:
    namespace = f"payrouter-test-faults-{run_token()}"
    gas = box.chain.new_account()
    with fault_proxy_in_thread(box.chain.rpc_url) as proxy:
        settings = Settings(
            price_table=box.table,
            providers={
                p: ProviderSettings(base_url=f"{box.upstream_url}/v1") for p in {m.provider for m in box.table.models}
            },
            redis_url=REDIS_URL,
            namespace=namespace,
            rpc_url=proxy.url,
            gas_key=SecretStr(gas.unsafe_export_private_key()),
            channel_authorizer_key=authorizer_key(box),
            receipt_timeout=1.0,
            reconcile_interval=0,
        )
        try:
            with serve_in_thread(create_app(settings)) as url:
                yield Faulty(url, proxy, namespace, gas)
        finally:
            delete_namespace(REDIS_URL, namespace)


@pytest.fixture
def proxy(faulty: Faulty) -> Iterator[RpcFaultProxy]:
    yield faulty.proxy
    faulty.proxy.set_mode("pass", 0)


def _agent(box: Sandbox, funds: int = 5_000_000) -> LocalSigner:
    agent = LocalSigner.generate()
    box.token.mint(agent.address, funds)
    return agent


def _body(**kw: Any) -> dict[str, Any]:
    content = f"q {secrets.token_hex(6)}"
    return {"model": "gpt-4o-mini", "max_tokens": 60, "messages": [{"role": "user", "content": content}], **kw}


def _receipt(response: httpx.Response) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(base64.b64decode(response.headers["PAYMENT-RESPONSE"]))
    return decoded


def _nonce(paid: dict[str, Any]) -> str:
    return str(paid["payload"]["authorization"]["nonce"])


@dataclass
class Paid:
    """A funded agent's signed payment for one request to the faulty router."""

    agent: LocalSigner
    url: str
    body: dict[str, Any]
    payment: dict[str, Any]
    amount: int

    @property
    def nonce(self) -> str:
        return _nonce(self.payment)


def _paid(faulty: Faulty, box: Sandbox, http: httpx.Client, **body: Any) -> Paid:
    agent = _agent(box)
    url = f"{faulty.url}/v1/chat/completions"
    request = _body(**body)
    o = offer(http, url, request)
    return Paid(agent, url, request, payment(o, agent), int(o["accepts"][0]["amount"]))


def _post_in_background(paid: Paid) -> tuple[threading.Thread, dict[str, httpx.Response]]:
    result: dict[str, httpx.Response] = {}

    def post() -> None:
        with httpx.Client(timeout=30) as client:
            result["response"] = client.post(paid.url, json=paid.body, headers=header(paid.payment))

    thread = threading.Thread(target=post)
    thread.start()
    return thread, result


def test_lost_send_reply_is_pending_with_its_hash_and_the_retry_gets_the_answer(
    faulty: Faulty, proxy: RpcFaultProxy, box: Sandbox, http: httpx.Client, observer: Observer
) -> None:
    """D2: the node took the transaction but the reply was lost."""
    p = _paid(faulty, box, http)
    agent, url, body, paid, amount = p.agent, p.url, p.body, p.payment, p.amount
    before = observer.balances(agent.address, box.operator.address)
    proxy.set_mode("lose_send")
    first = http.post(url, json=body, headers=header(paid))
    proxy.set_mode("pass")
    assert first.status_code == 402, first.text
    receipt = _receipt(first)
    assert receipt["success"] is False and receipt["errorReason"] == "settlement_pending"
    assert receipt["transaction"].startswith("0x") and len(receipt["transaction"]) == 66
    assert "may still move" in first.json()["error"]["message"]
    # the transfer was mined: the payer paid exactly once, and the record says pending with its hash
    assert box.chain.w3.eth.get_transaction_receipt(receipt["transaction"])["status"] == 1
    after = observer.balances(agent.address, box.operator.address)
    assert (before[0] - after[0], after[1] - before[1]) == (amount, amount)
    record = faulty.record(agent.address, _nonce(paid))
    assert record["state"] == State.PENDING and record["tx"] == receipt["transaction"]
    # the same payment again: the answer it paid for, no second model call, no second charge
    calls = observer.upstream_calls()
    again = http.post(url, json=body, headers=header(paid))
    assert again.status_code == 200, again.text
    assert again.json()["choices"][0]["message"]["content"].startswith("[gpt-4o-mini]")
    assert _receipt(again)["success"] is True and _receipt(again)["transaction"] == receipt["transaction"]
    assert observer.upstream_calls() == calls
    assert observer.balances(agent.address, box.operator.address) == after
    assert faulty.record(agent.address, _nonce(paid))["state"] == State.SETTLED


def test_slow_receipt_is_pending_then_answered(
    faulty: Faulty, proxy: RpcFaultProxy, box: Sandbox, http: httpx.Client, observer: Observer
) -> None:
    """D3: mined after the receipt timeout."""
    p = _paid(faulty, box, http)
    agent, url, body, paid, amount = p.agent, p.url, p.body, p.payment, p.amount
    proxy.set_mode("hide_receipt")
    first = http.post(url, json=body, headers=header(paid))
    assert first.status_code == 402 and _receipt(first)["errorReason"] == "settlement_pending"
    tx = _receipt(first)["transaction"]
    assert tx and observer.balances(agent.address) == [5_000_000 - amount]
    # receipts still hidden: the token's AuthorizationUsed log proves the transfer, so the retry
    # gets the answer it paid for
    done = http.post(url, json=body, headers=header(paid))
    assert done.status_code == 200 and _receipt(done) == {**_receipt(done), "success": True, "transaction": tx}
    assert observer.balances(agent.address) == [5_000_000 - amount]


def test_far_future_valid_before_is_served(
    faulty: Faulty, box: Sandbox, http: httpx.Client, observer: Observer
) -> None:
    """D5: validBefore = 2**255 never breaks the store."""
    agent = _agent(box)
    url = f"{faulty.url}/v1/chat/completions"
    for body in (_body(), _body(stream=True)):
        o = offer(http, url, body)
        amount = int(o["accepts"][0]["amount"])
        before = observer.balances(agent.address)[0]
        response = http.post(url, json=body, headers=header(payment(o, agent, valid_before=2**255)))
        assert response.status_code == 200, response.text
        deadline = time.monotonic() + 10
        while observer.balances(agent.address)[0] != before - amount:
            assert time.monotonic() < deadline, "not settled"
            time.sleep(0.02)


def _cancel(box: Sandbox, agent: LocalSigner, nonce: str) -> None:
    cancel = CancelAuthorization(authorizer=agent.address, nonce=bytes.fromhex(nonce[2:]))
    domain = Eip712Domain(box.token.domain.name, box.token.domain.version, box.chain.chain_id, box.token.address)
    signature = agent.sign_typed_data(domain, cancel)
    submitter = box.chain.new_account()  # any account can pay its gas
    assert box.token.cancel_authorization(submitter, cancel, signature)["status"] == 1


def test_cancel_before_the_first_chunk_cuts_the_stream_and_makes_a_debtor(
    faulty: Faulty, box: Sandbox, http: httpx.Client, observer: Observer
) -> None:
    """D1: the payer cancels its authorization after verification; its stream is cut."""
    p = _paid(faulty, box, http, stream=True, max_tokens=200)
    agent, url, paid = p.agent, p.url, p.payment
    observer.control(delay_ms=600, chunk_delay_ms=40)
    before = observer.balances(agent.address, box.operator.address)
    thread, result = _post_in_background(p)
    time.sleep(0.3)  # the attack's timing: verified, the model not answering yet
    _cancel(box, agent, _nonce(paid))
    thread.join(30)
    response: httpx.Response = result["response"]
    assert response.status_code == 200
    events = sse_events(response.text)
    name, data = events[-1]
    receipt = json.loads(data)
    assert name == "x402.payment" and receipt["success"] is False
    cut = json.loads(events[-2][1])
    assert cut["error"]["type"] == "payment_error" and "cut" in cut["error"]["message"]
    words = [e for e in events if e[1].startswith('{"id"')]
    assert len(words) < 6  # cut within a couple of chunks, not the whole answer
    assert observer.balances(agent.address, box.operator.address) == before  # the transfer reverted
    record = faulty.record(agent.address, _nonce(paid))
    assert record["state"] == State.OWED and record["delivered"] == "cut"
    # a debtor is refused streams, and still served plain calls
    observer.control(delay_ms=0, chunk_delay_ms=0)
    body2 = _body(stream=True)
    o2 = offer(http, url, body2)
    with observer.unchanged(agent.address):
        refused = http.post(url, json=body2, headers=header(payment(o2, agent)))
    assert rejection(refused) == (402, "payer_has_unpaid_stream")
    plain = _body()
    assert http.post(url, json=plain, headers=header(payment(offer(http, url, plain), agent))).status_code == 200


def test_cancel_mid_stream_is_too_late(faulty: Faulty, box: Sandbox, http: httpx.Client, observer: Observer) -> None:
    """D1: one second into a slow stream the transfer is already mined: the cancel fails."""
    p = _paid(faulty, box, http, stream=True, max_tokens=200)
    agent, url, body, paid, amount = p.agent, p.url, p.body, p.payment, p.amount
    observer.control(chunk_delay_ms=100)
    before = observer.balances(agent.address, box.operator.address)
    with httpx.Client(timeout=30) as client, client.stream("POST", url, json=body, headers=header(paid)) as response:
        lines = response.iter_lines()
        next(lines)
        time.sleep(1.0)
        with pytest.raises(Exception, match="reverted"):  # the authorization is already used
            _cancel(box, agent, _nonce(paid))
        events = sse_events("\n".join(lines))
    assert events[-2] == (None, "[DONE]") and json.loads(events[-1][1])["success"] is True
    after = observer.balances(agent.address, box.operator.address)
    assert (before[0] - after[0], after[1] - before[1]) == (amount, amount)


def test_reconciler_settles_pending_and_releases_expired(
    faulty: Faulty, proxy: RpcFaultProxy, box: Sandbox, http: httpx.Client, observer: Observer
) -> None:
    p = _paid(faulty, box, http)
    agent, url, body, paid = p.agent, p.url, p.body, p.payment
    proxy.set_mode("hide_receipt")
    assert http.post(url, json=body, headers=header(paid)).status_code == 402
    proxy.set_mode("pass")
    assert faulty.record(agent.address, _nonce(paid))["state"] == State.PENDING
    # a record whose worker died before settling, and whose authorization has expired unused
    stale = faulty.record(agent.address, _nonce(paid))
    dead = PaymentRecord.from_fields(
        {**stale, "id": f"exact:{agent.address.lower()}:0x{new_nonce().hex()}", "state": State.SERVING}
    )
    dead.nonce = dead.id.rsplit(":", 1)[1]
    dead.valid_before = int(time.time()) - 120

    async def reconcile() -> dict[str, int]:
        from redis.asyncio import Redis

        journal = RedisJournal(Redis.from_url(REDIS_URL), faulty.namespace)
        store = RedisStore(REDIS_URL, faulty.namespace)
        chain = ChainClient(box.chain.rpc_url)
        facilitator = LocalFacilitator(ChainClient(box.chain.rpc_url), faulty.gas, store, box.chain.chain_id)
        try:
            await journal.advance(dead, [])
            # two passes at once (two instances): one runs, the other stands aside
            first, second = await asyncio.gather(
                Reconciler(Resolver(journal, chain, facilitator), store).run_once(),
                Reconciler(Resolver(journal, chain, facilitator), store).run_once(),
            )
            assert sorted([first.skipped, second.skipped]) == [False, True]
            report = second if first.skipped else first
            again = await Reconciler(Resolver(journal, chain, facilitator), store).run_once(wait=5)
            assert again.examined == 0  # nothing left open: a second pass is a no-op
            return report.ended or {}
        finally:
            await journal.close()
            await store.close()
            await chain.close()
            await facilitator.close()

    ended = asyncio.run(reconcile())
    assert ended.get(State.SETTLED, 0) >= 1 and ended.get(State.RELEASED, 0) >= 1
    assert faulty.record(agent.address, _nonce(paid))["state"] == State.SETTLED
    assert faulty.record(agent.address, dead.nonce)["state"] == State.RELEASED


def test_rpc_down_at_the_first_chunk_holds_the_stream_until_it_settles(
    faulty: Faulty, proxy: RpcFaultProxy, box: Sandbox, http: httpx.Client, observer: Observer
) -> None:
    """D1: the RPC is down when the transfer should start: content waits, then flows once it is out."""
    p = _paid(faulty, box, http, stream=True)
    agent, paid, amount = p.agent, p.payment, p.amount
    observer.control(delay_ms=500)
    thread, result = _post_in_background(p)
    time.sleep(0.25)  # verified; the model answers at 0.5 s, into an RPC outage
    proxy.set_mode("down")
    time.sleep(1.0)
    proxy.set_mode("pass")
    thread.join(30)
    events = sse_events(result["response"].text)
    assert events[-2] == (None, "[DONE]")
    assert json.loads(events[-1][1])["success"] is True
    assert observer.balances(agent.address) == [5_000_000 - amount]
    assert faulty.record(agent.address, _nonce(paid))["state"] == State.SETTLED


def test_replay_while_the_rpc_is_down_says_pending_not_500(
    faulty: Faulty, proxy: RpcFaultProxy, box: Sandbox, http: httpx.Client, observer: Observer
) -> None:
    p = _paid(faulty, box, http)
    proxy.set_mode("lose_send")
    first = http.post(p.url, json=p.body, headers=header(p.payment))
    assert _receipt(first)["errorReason"] == "settlement_pending"
    proxy.set_mode("down")
    again = http.post(p.url, json=p.body, headers=header(p.payment))
    assert again.status_code == 402, again.text  # what the journal knows: pending, with its hash
    assert _receipt(again)["transaction"] == _receipt(first)["transaction"]
    proxy.set_mode("pass")
    assert http.post(p.url, json=p.body, headers=header(p.payment)).status_code == 200


def test_a_payment_id_left_claimed_by_a_lost_worker_is_answered_from_the_journal(
    faulty: Faulty, proxy: RpcFaultProxy, box: Sandbox, http: httpx.Client, observer: Observer
) -> None:
    p = _paid(faulty, box, http)
    pid = f"pid-{secrets.token_hex(12)}"
    paid = {**p.payment, "extensions": {"payment-identifier": {"info": {"id": pid}}}}
    proxy.set_mode("lose_send")
    first = http.post(p.url, json=p.body, headers=header(paid))
    proxy.set_mode("pass")
    assert _receipt(first)["errorReason"] == "settlement_pending"
    # a worker that lost Redis mid-request leaves the id claimed, with no response, for this
    # very payment and request
    fingerprint = hashlib.sha256(json.dumps(paid, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    digest = request_digest("POST", "/v1/chat/completions", p.body)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        key = f"{faulty.namespace}:pid:{p.agent.address.lower()}:{pid}"
        assert client.get(key) is not None  # the id stays bound to its pending payment
        client.set(key, f"{fingerprint}:{digest}", ex=300)
    finally:
        client.close()
    # the journal knows the payment is done with its worker: it answers, once mined
    again = http.post(p.url, json=p.body, headers=header(paid))
    assert again.status_code == 200, again.text
    assert _receipt(again)["transaction"] == _receipt(first)["transaction"]
