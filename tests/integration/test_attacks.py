"""Attacks on the payment journal and gate, as an attacker and as a flaky network would make them.

Real parts only: real HTTP to a real router, real anvil transactions, the JSON-RPC fault proxy
(``payrouter.sandbox.rpc_faults``), the test model server's knobs, and (for the remote
facilitator) the official x402 facilitator behind a small HTTP front that loses its /settle
reply. Nothing of payrouter is patched.

Every test's docstring starts with one of:

- ``FIXED``: the review's finding, asserting the documented guarantee; it failed when written
  (severity, who lost what, and the fix are in the docstring) and passes since the fixes;
- ``BLOCKED (passes)``: an attack that was suspected and is in fact stopped (two of them were
  findings on 48cf273..91fbe98 and were fixed by 7ff9df3 during this review).

Line numbers cited are those of 7ff9df3.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import pytest
import redis
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from web3 import Web3

from payrouter.app import create_app
from payrouter.journal import State
from payrouter.sandbox.dev import Sandbox
from payrouter.sandbox.rpc_faults import RpcFaultProxy, fault_proxy_in_thread
from payrouter.sandbox.serving import serve_in_thread
from payrouter.settings import ProviderSettings, Settings
from pricing import PriceTable, StreamingPolicy
from tests.redis_keys import delete_namespace, journal_record, run_token
from wallets import (
    CancelAuthorization,
    Eip712Domain,
    LocalSigner,
    TransferWithAuthorization,
    new_nonce,
    sign_authorization,
)

from .conftest import REDIS_URL, Observer, authorizer_key, exact_only
from .official_facilitator import facilitator_app
from .payments import header, offer, payment, rejection, sse_events
from .reconcile_now import reconcile_now

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


@dataclass
class Router:
    """A router of our own (its chain RPC through the fault proxy, its own journal namespace and
    gas wallet, no background reconciler)."""

    url: str
    namespace: str
    gas: LocalSigner
    box: Sandbox

    @property
    def chat(self) -> str:
        return f"{self.url}/v1/chat/completions"

    def record(self, payer: str, nonce: str) -> dict[str, str]:
        return journal_record(REDIS_URL, self.namespace, payer, nonce)

    def gas_transactions(self) -> int:
        """Transactions the gas wallet has had mined (each costs the operator gas)."""
        return int(self.box.chain.w3.eth.get_transaction_count(self.gas.address, "latest"))


def _providers(box: Sandbox) -> dict[str, ProviderSettings]:
    return {p: ProviderSettings(base_url=f"{box.upstream_url}/v1") for p in {m.provider for m in box.table.models}}


@contextlib.contextmanager
def _router(
    box: Sandbox, rpc_url: str, *, table: PriceTable | None = None, receipt_timeout: float = 1.0
) -> Iterator[Router]:
    namespace = f"payrouter-test-attacks-{run_token()}"
    gas = box.chain.new_account()
    settings = Settings(
        price_table=table or box.table,
        providers=_providers(box),
        redis_url=REDIS_URL,
        namespace=namespace,
        rpc_url=rpc_url,
        gas_key=SecretStr(gas.unsafe_export_private_key()),
        channel_authorizer_key=authorizer_key(box),
        receipt_timeout=receipt_timeout,
        reconcile_interval=0,
    )
    try:
        with serve_in_thread(create_app(settings)) as url:
            yield Router(url, namespace, gas, box)
    finally:
        delete_namespace(REDIS_URL, namespace)


@pytest.fixture(scope="module")
def rpc_proxy(box: Sandbox) -> Iterator[RpcFaultProxy]:
    with fault_proxy_in_thread(box.chain.rpc_url) as proxy:
        yield proxy


@pytest.fixture
def proxy(rpc_proxy: RpcFaultProxy) -> Iterator[RpcFaultProxy]:
    rpc_proxy.set_mode("pass", 0)
    yield rpc_proxy
    rpc_proxy.set_mode("pass", 0)


def _agent(box: Sandbox, funds: int = 5_000_000) -> LocalSigner:
    agent = LocalSigner.generate()
    box.token.mint(agent.address, funds)
    return agent


def _body(**kw: Any) -> dict[str, Any]:
    content = f"attack {secrets.token_hex(6)}"
    return {"model": "gpt-4o-mini", "max_tokens": 60, "messages": [{"role": "user", "content": content}], **kw}


def _nonce(paid: dict[str, Any]) -> str:
    return str(paid["payload"]["authorization"]["nonce"])


def _receipt(response: httpx.Response) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(base64.b64decode(response.headers["PAYMENT-RESPONSE"]))
    return decoded


def _words(text: str) -> str:
    """The streamed content of an OpenAI-shaped SSE body."""
    out = []
    for _, data in sse_events(text):
        if data.startswith('{"id"'):
            for choice in json.loads(data).get("choices") or []:
                out.append((choice.get("delta") or {}).get("content") or "")
    return "".join(out)


def _why(response: httpx.Response) -> str:
    """Status and the server's message, short."""
    try:
        doc = response.json()
    except ValueError:
        return f"{response.status_code} {response.text[:120]!r}"
    message = doc.get("message") or (doc.get("error") or {}).get("message") if isinstance(doc, dict) else None
    return f"{response.status_code} {str(message or doc)[:160]}"


def _in_thread(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = fn()
        except Exception as exc:  # surfaced by the test
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def _wait_for(predicate: Any, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _drain_funds(box: Sandbox, agent: LocalSigner) -> None:
    """The payer moves its whole balance away with another EIP-3009 transfer (any account may
    submit it): the payment it already handed us can no longer be paid."""
    balance = box.token.balance_of(agent.address)
    auth = TransferWithAuthorization(
        from_=agent.address,
        to=LocalSigner.generate().address,
        value=balance,
        valid_after=0,
        valid_before=int(time.time()) + 600,
        nonce=new_nonce(),
    )
    signature = sign_authorization(agent, box.token.domain, auth)
    box.token.transfer_with_authorization(box.chain.new_account(), auth, signature)
    assert box.token.balance_of(agent.address) == 0


def _cancel(box: Sandbox, agent: LocalSigner, nonce: str) -> None:
    cancel = CancelAuthorization(authorizer=agent.address, nonce=bytes.fromhex(nonce[2:]))
    domain = Eip712Domain(box.token.domain.name, box.token.domain.version, box.chain.chain_id, box.token.address)
    signature = agent.sign_typed_data(domain, cancel)
    assert box.token.cancel_authorization(box.chain.new_account(), cancel, signature)["status"] == 1


# A minimal EIP-1271 smart wallet: isValidSignature(bytes32,bytes) answers the magic value
# 0x1626ba7e only when it is given more than 1,000,000 gas. An eth_call simulation (the node's
# default gas: the block gas limit) sees a valid signature; the real settlement transaction
# (SETTLE_GAS_LIMIT = 200,000 gas) sees an invalid one and reverts.
#
#   GAS PUSH3 1000000 LT PUSH1 valid JUMPI            ; 1e6 < gas ?
#   PUSH1 32 PUSH1 0 RETURN                           ; no: 32 zero bytes (invalid)
#   valid: JUMPDEST PUSH4 0x1626ba7e PUSH1 224 SHL PUSH1 0 MSTORE PUSH1 32 PUSH1 0 RETURN
_WALLET_RUNTIME = bytes.fromhex("5a620f424010600e5760206000f35b631626ba7e60e01b60005260206000f3")


_WALLET_INIT = bytes.fromhex("601f600c600039601f6000f3") + _WALLET_RUNTIME


def _deploy_gas_sensitive_wallet(box: Sandbox) -> str:
    deployer = box.chain.new_account()
    receipt = box.chain.send(deployer, {"data": "0x" + _WALLET_INIT.hex(), "gas": 200_000})
    address = str(receipt["contractAddress"])
    assert box.chain.w3.eth.get_code(Web3.to_checksum_address(address)) == _WALLET_RUNTIME
    return address


def _contract_wallet_payment(offer_: dict[str, Any], wallet: str) -> dict[str, Any]:
    req = offer_["accepts"][0]
    auth = TransferWithAuthorization(
        from_=wallet,
        to=req["payTo"],
        value=int(req["amount"]),
        valid_after=0,
        valid_before=int(time.time()) + 300,
        nonce=new_nonce(),
    )
    # not 65 bytes: an EIP-1271 signature, checked by the token (and so by the simulation)
    signature = b"\x01" * 66
    return {
        "x402Version": 2,
        "resource": offer_.get("resource"),
        "accepted": req,
        "payload": {"signature": "0x" + signature.hex(), "authorization": auth.to_wire()},
    }


def _burn_nonce(box: Sandbox, agent: LocalSigner, paid: dict[str, Any]) -> str:
    """The payer signs *another* authorization with the same nonce (1 unit to an address of its
    own) and has it mined: the token marks the nonce used and logs AuthorizationUsed, but
    nothing reaches payTo. Returns its transaction hash."""
    own = LocalSigner.generate().address
    auth = TransferWithAuthorization(
        from_=agent.address,
        to=own,
        value=1,
        valid_after=0,
        valid_before=int(time.time()) + 600,
        nonce=bytes.fromhex(_nonce(paid)[2:]),
    )
    receipt = box.token.transfer_with_authorization(
        box.chain.new_account(), auth, sign_authorization(agent, box.token.domain, auth)
    )
    assert box.token.balance_of(own) == 1
    return "0x" + bytes(receipt["transactionHash"]).hex()


def _remote_router_settings(
    box: Sandbox, namespace: str, facilitator_url: str, token: str, rpc_url: str | None
) -> Settings:
    return Settings(
        price_table=exact_only(box.table),
        providers=_providers(box),
        redis_url=REDIS_URL,
        namespace=namespace,
        facilitator="remote",
        facilitator_url=facilitator_url,
        facilitator_headers={"*": {"Authorization": SecretStr(f"Bearer {token}")}},
        rpc_url=rpc_url,
        reconcile_interval=0,
    )


def _lossy_facilitator_front(target: str) -> Starlette:
    """An HTTP front for a facilitator that forwards everything and loses /settle's reply
    (502 without an x402 body), as a load balancer timing out on a slow settlement does."""

    async def forward(request: Request) -> Response:
        headers = {k: v for k, v in request.headers.items() if k in ("authorization", "content-type")}
        async with httpx.AsyncClient(timeout=60) as client:
            reply = await client.request(
                request.method, target + request.url.path, content=await request.body(), headers=headers
            )
        if request.url.path == "/settle":
            return Response(b"502 Bad Gateway: upstream timed out\n", 502, media_type="text/plain")
        return Response(reply.content, reply.status_code, media_type=reply.headers.get("content-type"))

    return Starlette(
        routes=[
            Route("/verify", forward, methods=["POST"]),
            Route("/settle", forward, methods=["POST"]),
            Route("/supported", forward, methods=["GET"]),
        ]
    )


def _submit_payment_on_chain(box: Sandbox, paid: dict[str, Any]) -> None:
    """Anyone holding the signed authorization submits it themselves (the money goes to payTo)."""
    auth = TransferWithAuthorization.from_wire(paid["payload"]["authorization"])
    signature = bytes.fromhex(paid["payload"]["signature"][2:])
    box.token.transfer_with_authorization(box.chain.new_account(), auth, signature)


def _slow_lossy_facilitator_front(target: str) -> Starlette:
    """Forwards /verify and /supported; /settle is forwarded in the background and answered
    504 after 0.5 s (a gateway time-out in front of a facilitator that is still settling)."""
    background: set[Any] = set()

    async def forward(request: Request) -> Response:
        headers = {k: v for k, v in request.headers.items() if k in ("authorization", "content-type")}
        body = await request.body()

        async def call() -> httpx.Response:
            async with httpx.AsyncClient(timeout=120) as client:
                return await client.request(request.method, target + request.url.path, content=body, headers=headers)

        if request.url.path == "/settle":
            task = asyncio.ensure_future(call())
            background.add(task)
            await asyncio.sleep(0.5)
            return Response(b"504 Gateway Timeout\n", 504, media_type="text/plain")
        reply = await call()
        return Response(reply.content, reply.status_code, media_type=reply.headers.get("content-type"))

    return Starlette(
        routes=[
            Route("/verify", forward, methods=["POST"]),
            Route("/settle", forward, methods=["POST"]),
            Route("/supported", forward, methods=["GET"]),
        ]
    )


# --------------------------------------------------------------------------------------------
# findings, most severe first (each fails)
# --------------------------------------------------------------------------------------------


def test_a_payer_that_burns_its_nonce_gets_no_answer_and_no_settled_record(
    box: Sandbox, proxy: RpcFaultProxy, http: httpx.Client, observer: Observer
) -> None:
    """FIXED (passes; was a finding of the review, failing on 7ff9df3) - CRITICAL: a free answer, and 'settled' while no money moved.

    Resolver._find_transfer (reconciler.py:93-108) takes any AuthorizationUsed(payer, nonce) log
    as proof of *our* payment ("the authorization names its recipient and value, so that log
    alone proves the payment"). It does not: the nonce belongs to the payer, who can sign a
    different authorization with the same nonce (another recipient, another value, or a
    receiveWithAuthorization) and get it mined first. Here our broadcast's reply is lost
    (pending, the answer kept with the record); the payer burns the nonce with 1 unit to
    itself; presenting the payment again resolves the record to SETTLED (charged = the quote,
    tx = the payer's own transfer) and returns the kept answer with a success receipt. payTo
    received nothing. On a public mempool the payer can do the same to any pending settlement
    by front-running it, and an 'owed' debtor can launder its debt the same way (the record
    becomes settled and streams are served again). LocalFacilitator._find_settlement checks the
    Transfer to payTo; the resolver does not.

    Fix: in _find_transfer accept a transaction only if its receipt has the Transfer(payer ->
    payTo, amount) log of this record (Resolver._moves); a used nonce without it means nothing
    reached us: released (or unpaid for delivered content), never settled.
    """
    agent = _agent(box)
    with _router(box, proxy.url) as router:
        warm = _body()  # one settlement, so fees and the gas nonce are cached (no RPC before the send)
        assert (
            http.post(
                router.chat, json=warm, headers=header(payment(offer(http, router.chat, warm), agent))
            ).status_code
            == 200
        )
        body = _body()
        o = offer(http, router.chat, body)
        paid = payment(o, agent)
        operator_before = box.token.balance_of(box.operator.address)
        observer.control(delay_ms=700)
        threading.Timer(0.3, proxy.set_mode, args=("down",)).start()  # verified; the send's reply is then lost
        first = http.post(router.chat, json=body, headers=header(paid))
        proxy.set_mode("pass")
        observer.control(delay_ms=0)
        assert first.status_code == 402 and _receipt(first)["errorReason"] == "settlement_pending"
        burn = _burn_nonce(box, agent, paid)
        again = http.post(router.chat, json=body, headers=header(paid))
        record = router.record(agent.address, _nonce(paid))
        got_answer = again.status_code == 200 and "[gpt-4o-mini]" in again.text
        assert box.token.balance_of(box.operator.address) == operator_before  # payTo received nothing
        assert not got_answer and record["state"] != State.SETTLED, (
            f"answered {again.status_code} for free; record {record['state']} charged={record['charged']} "
            f"tx={'the payer-s own transfer' if record['tx'] == burn else record['tx']}"
        )


def test_a_contract_wallet_that_approves_only_with_more_gas_is_refused_at_verification(
    box: Sandbox, proxy: RpcFaultProxy, http: httpx.Client, observer: Observer
) -> None:
    """BLOCKED (passes; was a HIGH finding): one signed payment bought unlimited model calls and gas.

    An EIP-1271 wallet whose isValidSignature approves only with more gas than the settlement
    transaction gets passed a simulation that carried no gas limit, then reverted on chain;
    the record was released and the same payment could be presented again, each time one model
    call and one reverted transaction paid by our gas wallet. Now the simulation runs with the
    settlement's gas (refused before any model call), and a payment whose settlement reverted
    after it verified is never taken over again (tests/journal: the open rule).
    """
    wallet = _deploy_gas_sensitive_wallet(box)
    box.token.mint(wallet, 1_000_000)
    with _router(box, proxy.url) as router:
        body = _body()
        paid = _contract_wallet_payment(offer(http, router.chat, body), wallet)
        calls, sent = observer.upstream_calls(), router.gas_transactions()
        for _ in range(3):
            response = http.post(router.chat, json=body, headers=header(paid))
            assert rejection(response) == (402, "invalid_exact_evm_payload_signature"), response.text
        assert box.token.balance_of(wallet) == 1_000_000
        # three presentations: no model call, no transaction
        assert (observer.upstream_calls() - calls, router.gas_transactions() - sent) == (0, 0)


def test_remote_in_doubt_payment_is_not_released_while_its_transfer_is_still_coming(
    box: Sandbox, http: httpx.Client, observer: Observer
) -> None:
    """FIXED (passes; was a finding of the review, failing on 7ff9df3) - HIGH: 'released' while the money moves; the payer pays and gets nothing.

    facilitator = remote, rpc_url set. The /settle reply is lost (gateway time-out) while the
    facilitator is still settling: the record is pending without a hash. The payer presents
    the payment again while the facilitator is unreachable (restarting): Resolver.resolve sees
    the authorization unused (its transfer is not mined yet), calls _settle, the facilitator
    call fails to connect (SettlementFailed 'unexpected_settle_error' = we could not even ask),
    and reconciler.py:173-178 writes RELEASED and drops the answer. Then the facilitator's
    transfer lands: the money moved, the record says released, the answer is gone. The same
    rule fires when a local re-broadcast of a 'lost' pending transaction fails for any reason
    (RPC unreachable, gas), while the first broadcast may still be mined (load-balanced RPC
    nodes that have not seen it); since 6213f5a the live stream calls resolve every 0.25 s.

    Fix: in Resolver._settle, a SettlementFailed that is not a definitive refusal of *this
    authorization* (unexpected_settle_error / not broadcast / facilitator unreachable) must
    leave the record as it is; release only when the authorization is unused *and* expired
    (the module's own rule), never on a failed attempt while it is still valid.
    """
    token = "attack-facilitator-token"
    namespace = f"payrouter-test-attacks-{run_token()}"
    agent = _agent(box)
    with fault_proxy_in_thread(box.chain.rpc_url) as facilitator_rpc:
        app, _calls = facilitator_app(box.chain.new_account().unsafe_export_private_key(), facilitator_rpc.url,
                                      box.chain.network, token)  # fmt: skip
        front = contextlib.ExitStack()
        try:
            with serve_in_thread(app) as facilitator_url:
                front_url = front.enter_context(serve_in_thread(_slow_lossy_facilitator_front(facilitator_url)))
                settings = _remote_router_settings(box, namespace, front_url, token, box.chain.rpc_url)
                with serve_in_thread(create_app(settings)) as router:
                    url = f"{router}/v1/chat/completions"
                    body = _body()
                    o = offer(http, url, body)
                    amount = int(o["accepts"][0]["amount"])
                    paid = payment(o, agent)
                    observer.control(delay_ms=700)
                    # verification is quick; the facilitator's settlement then crawls (2 s per RPC)
                    threading.Timer(0.3, facilitator_rpc.set_mode, args=("pass", 2000)).start()
                    first = http.post(url, json=body, headers=header(paid))
                    assert first.status_code == 402 and _receipt(first)["errorReason"] == "settlement_pending"
                    observer.control(delay_ms=0)
                    front.close()  # the facilitator is unreachable for a moment
                    again = http.post(url, json=body, headers=header(paid))
                    with redis.Redis.from_url(REDIS_URL, decode_responses=True) as r:
                        key = f"{namespace}:{{j}}:rec:exact:{agent.address.lower()}:{_nonce(paid)}"
                        state_after_retry = r.hget(key, "state")
                        _wait_for(lambda: box.token.balance_of(agent.address) < 5_000_000, 60, "the transfer")
                        assert box.token.balance_of(agent.address) == 5_000_000 - amount  # the money moved
                        state, answer = r.hget(key, "state"), r.exists(key.replace(":rec:", ":ans:"))
                    assert state != State.RELEASED and answer, (
                        f"paid {amount}; after the retry ({again.status_code}) the record was {state_after_retry}, "
                        f"now {state}, answer kept: {bool(answer)}"
                    )
        finally:
            front.close()
            delete_namespace(REDIS_URL, namespace)


def test_client_timeout_during_a_held_settlement_gets_the_answer_served_again(
    box: Sandbox, proxy: RpcFaultProxy, http: httpx.Client, observer: Observer
) -> None:
    """FIXED (passes; was a finding of the review, failing on 7ff9df3) - HIGH: a flaky client pays the full quote and can never fetch the answer.

    In before_first_byte mode (and for every stream over the exposure limits) nothing is sent
    until the transfer is mined; on a real chain that is one block or more, long enough for
    client read time-outs. The client gives up while _first_body settles (shielded), the
    settlement completes, and the disconnect then cancels the handler: _finish records SETTLED
    with delivered 'partial' and the transcript it had at that moment (nothing the client ever
    received). Presenting the payment again returns that empty transcript with a success
    receipt. The README's 'client hangs up mid-stream' row covers a client that saw content;
    here none ever left the server.

    Fix: once the money moved, never let a hang-up truncate what is kept: finish the model
    call into the transcript in the background (or mark such a record delivered='broken' when
    nothing reached the client, so the same payment is served again).
    """
    table = box.table.model_copy(update={"streaming": StreamingPolicy(settlement="before_first_byte")})
    agent = _agent(box)
    with _router(box, proxy.url, table=table) as router:
        body = _body(stream=True, max_tokens=200)
        o = offer(http, router.chat, body)
        amount = int(o["accepts"][0]["amount"])
        paid = payment(o, agent)
        observer.control(delay_ms=700, chunk_delay_ms=50)
        # verification runs at once; from 0.3 s the chain is slow (1.5 s per RPC round trip)
        threading.Timer(0.3, proxy.set_mode, args=("pass", 1500)).start()
        with pytest.raises(httpx.ReadTimeout), httpx.Client(timeout=httpx.Timeout(2.5)) as impatient:
            impatient.post(router.chat, json=body, headers=header(paid))
        _wait_for(lambda: router.record(agent.address, _nonce(paid)).get("state") == State.SETTLED, what="settled")
        proxy.set_mode("pass", 0)
        assert box.token.balance_of(agent.address) == 5_000_000 - amount  # charged the whole quote
        again = http.post(router.chat, json=body, headers=header(paid))
        assert again.status_code == 200
        fetched = _words(again.text)
        assert "[DONE]" in again.text and fetched.startswith("[gpt-4o-mini]"), (
            f"paid {amount}, the same payment returns only {fetched!r} "
            f"(delivered={router.record(agent.address, _nonce(paid))['delivered']})"
        )


def test_remote_facilitator_payment_whose_settle_reply_was_lost_is_answered_from_the_chain(
    box: Sandbox, http: httpx.Client, observer: Observer
) -> None:
    """BLOCKED (passes; was a HIGH finding for facilitator = remote without rpc_url).

    The facilitator settled (the money moved) but its /settle reply was lost: the record is
    pending with no hash. Without a chain client nothing could ever resolve it, so a remote
    facilitator now needs rpc_url (read-only), and the payment presented again is found on
    chain (the token's AuthorizationUsed log and the Transfer to payTo) and answered.
    """
    with pytest.raises(ValueError, match="needs rpc_url too"):
        _remote_router_settings(box, "unused", "http://127.0.0.1:9", "t", rpc_url=None)
    token = "attack-facilitator-token"
    namespace = f"payrouter-test-attacks-{run_token()}"
    app, _calls = facilitator_app(box.chain.new_account().unsafe_export_private_key(), box.chain.rpc_url,
                                  box.chain.network, token)  # fmt: skip
    agent = _agent(box)
    try:
        with (
            serve_in_thread(app) as facilitator_url,
            serve_in_thread(_lossy_facilitator_front(facilitator_url)) as front,
        ):
            settings = _remote_router_settings(box, namespace, front, token, rpc_url=box.chain.rpc_url)
            with serve_in_thread(create_app(settings)) as router:
                url = f"{router}/v1/chat/completions"
                body = _body()
                o = offer(http, url, body)
                amount = int(o["accepts"][0]["amount"])
                paid = header(payment(o, agent))
                first = http.post(url, json=body, headers=paid)
                assert first.status_code == 402 and _receipt(first)["errorReason"] == "settlement_pending"
                assert box.token.balance_of(agent.address) == 5_000_000 - amount  # the money moved
                answers = [http.post(url, json=body, headers=paid) for _ in range(3)]
                assert [a.status_code for a in answers][-1] == 200, (
                    f"paid {amount}; every retry says: {_why(answers[-1])}"
                )
    finally:
        delete_namespace(REDIS_URL, namespace)


def test_replaying_an_owed_payment_broadcasts_no_reverting_transaction(
    box: Sandbox, proxy: RpcFaultProxy, http: httpx.Client, observer: Observer
) -> None:
    """FIXED (passes; was a finding of the review, failing on 7ff9df3) - MEDIUM/HIGH: a debtor drains the operator's gas wallet for free.

    A payer empties its balance between verification and the first chunk: the stream is cut
    and the record is 'owed'. Every presentation of that same payment goes
    gate._replay -> Resolver.resolve(settle=True) -> Resolver._settle ->
    LocalFacilitator.settle, which broadcasts without simulating first; the transfer reverts
    (gas paid by us), the record stays owed (reconciler.py:173-177) and the next presentation
    does it again. No rate limit, and with validBefore = 2**255 (accepted, D5) the record never
    expires, so the background reconciler also re-broadcasts it on every pass, forever.

    Fix: simulate (eth_call with the settlement's gas and sender) before every re-broadcast of
    an owed/pending record and skip it while it would revert; never settle from the replay
    path for 'owed' (leave it to the reconciler), back off per record (next_attempt_at), and
    clamp the reconciler's horizon for far-future validBefore.
    """
    agent = _agent(box)
    with _router(box, proxy.url) as router:
        body = _body(stream=True, max_tokens=200)
        paid = payment(offer(http, router.chat, body), agent, valid_before=2**255)
        observer.control(delay_ms=800, chunk_delay_ms=40)

        def stream() -> httpx.Response:
            with httpx.Client(timeout=30) as client:
                return client.post(router.chat, json=body, headers=header(paid))

        thread, result = _in_thread(stream)
        time.sleep(0.3)  # verified; the model has not answered yet
        _drain_funds(box, agent)
        thread.join(30)
        assert result["value"].status_code == 200 and "the stream was cut" in result["value"].text
        assert router.record(agent.address, _nonce(paid))["state"] == State.OWED
        observer.control(delay_ms=0, chunk_delay_ms=0)
        sent = router.gas_transactions()
        for _ in range(5):
            assert http.post(router.chat, json=body, headers=header(paid)).status_code == 402
        reverted = router.gas_transactions() - sent
        assert reverted <= 1, f"5 presentations of an unpayable owed payment: {reverted} reverted settlements"


def test_a_stream_cut_by_our_rpc_outage_and_collected_later_is_answered(
    box: Sandbox, proxy: RpcFaultProxy, http: httpx.Client, observer: Observer
) -> None:
    """FIXED (passes; was a finding of the review, failing on 7ff9df3) - MEDIUM: our outage, the payer's loss.

    The chain RPC is down when the stream's transfer should start. _settle_during retries for
    unconfirmed_seconds, then the stream is cut and the record is 'owed' (streaming.py:299-300):
    the payer is refused streams although it did nothing wrong. When the RPC is back the owed
    record is collected (replay or reconciler: the whole quote), but owe() never stored the
    transcript (settlement.py:172-180 passes no answer) and a cut record is not served again
    (gate.py:363 only re-serves 'broken'/'again'): the payer paid the full quote and the same payment
    returns 402 'its answer is no longer kept'. This applies to every collected owed stream.

    Fix: when the failure is ours (not broadcast: unexpected_settle_error) release instead of
    owe, or keep the transcript with the owed record and, once collected, serve a cut stream
    again like a broken one.
    """
    table = box.table.model_copy(update={"streaming": StreamingPolicy(unconfirmed_seconds=1)})
    agent = _agent(box)
    with _router(box, proxy.url, table=table) as router:
        body = _body(stream=True, max_tokens=200)
        o = offer(http, router.chat, body)
        amount = int(o["accepts"][0]["amount"])
        paid = payment(o, agent)
        observer.control(delay_ms=700, chunk_delay_ms=100)

        def stream() -> httpx.Response:
            with httpx.Client(timeout=30) as client:
                return client.post(router.chat, json=body, headers=header(paid))

        calls = observer.upstream_calls()
        thread, result = _in_thread(stream)
        # verified once the model is called (however slow the machine); now our RPC goes down
        deadline = time.monotonic() + 20
        while observer.upstream_calls() == calls and time.monotonic() < deadline:
            time.sleep(0.01)
        proxy.set_mode("down")
        thread.join(30)
        proxy.set_mode("pass")
        assert "the stream was cut" in result["value"].text
        record = router.record(agent.address, _nonce(paid))
        assert (record["state"], record["delivered"], record["reason"]) == (
            State.OWED,
            "cut",
            "unexpected_settle_error",
        )
        observer.control(delay_ms=0, chunk_delay_ms=0)
        again = http.post(router.chat, json=body, headers=header(paid))
        assert box.token.balance_of(agent.address) == 5_000_000 - amount  # collected: the whole quote
        assert again.status_code == 200 and "[DONE]" in again.text, (
            f"paid {amount} for a stream we cut; the same payment returns {_why(again)}"
        )


def test_remote_facilitator_front_run_stands_when_the_money_moved(
    box: Sandbox, http: httpx.Client, observer: Observer
) -> None:
    """FIXED (passes; was a finding of the review, failing on 7ff9df3) - MEDIUM: with facilitator = remote, a settlement someone else beat is
    'settlement failed', released and never answered, although the payer's money reached payTo.

    Anyone holding the signed authorization may submit it (a mempool copier, an on-path party,
    the payer's own tooling). LocalFacilitator.settle detects that (_find_settlement: the
    payment stands). With a remote facilitator the /settle answer is success=false (nonce
    used / transaction failed), RemoteFacilitator raises SettlementFailed, and the gate releases
    the record and withholds the answer (gate.py:336-338) with no look at the chain, even with
    rpc_url configured. Presenting the payment again: released -> re-opened -> verify says the
    nonce is used -> 402. The payer paid and gets nothing; the journal says 'released'.

    Fix: on a refused settlement, before releasing, ask the chain (authorizationState +
    AuthorizationUsed to payTo for this nonce, as Resolver._find_transfer does) and treat a
    used authorization that paid payTo as settled; without rpc_url treat it as pending.
    """
    token = "attack-facilitator-token"
    namespace = f"payrouter-test-attacks-{run_token()}"
    app, _calls = facilitator_app(box.chain.new_account().unsafe_export_private_key(), box.chain.rpc_url,
                                  box.chain.network, token)  # fmt: skip
    agent = _agent(box)
    try:
        with serve_in_thread(app) as facilitator_url:
            settings = _remote_router_settings(box, namespace, facilitator_url, token, box.chain.rpc_url)
            with serve_in_thread(create_app(settings)) as router:
                url = f"{router}/v1/chat/completions"
                body = _body()
                o = offer(http, url, body)
                amount = int(o["accepts"][0]["amount"])
                paid = payment(o, agent)
                observer.control(delay_ms=700)
                thread, result = _in_thread(lambda: httpx.post(url, json=body, headers=header(paid), timeout=30))
                time.sleep(0.3)  # verified; the model is still answering
                _submit_payment_on_chain(box, paid)
                thread.join(30)
                observer.control(delay_ms=0)
                first: httpx.Response = result["value"]
                assert box.token.balance_of(agent.address) == 5_000_000 - amount  # the money reached payTo
                again = http.post(url, json=body, headers=header(paid))
                answered = [r.status_code for r in (first, again)]
                with redis.Redis.from_url(REDIS_URL, decode_responses=True) as r:
                    state = r.hget(f"{namespace}:{{j}}:rec:exact:{agent.address.lower()}:{_nonce(paid)}", "state")
                assert 200 in answered and state == State.SETTLED, (
                    f"paid {amount}: answers {answered} ({first.json()['error']['message'][:90]}), record {state}"
                )
    finally:
        delete_namespace(REDIS_URL, namespace)


def test_payment_identifier_does_not_pin_a_broken_stream(box: Sandbox, http: httpx.Client, observer: Observer) -> None:
    """FIXED (passes; was a finding of the review, failing on 7ff9df3) - MEDIUM: 'a stream the model broke is served again' fails for SDK users.

    payrouter's own agent SDK sends x402's payment-identifier whenever the 402 declares it
    (ours does). _idempotent caches any 200 under that id for 24 h (gate.py:244-255), a broken
    stream included, and answers the same payment from that cache (gate.py:226-229) without
    ever reaching the journal's _replay/_serve_again. The payment's fingerprint covers the
    extensions, so the payer cannot drop the id either: it paid and holds a broken answer.
    (Likewise a cut stream that is collected later, or a during_stream 'pending' receipt, is
    replayed from the cache as it first was.)

    Fix: cache only final, complete outcomes (or store only a pointer to the journal record
    and answer from _replay), and never cache a stream whose record is not settled+complete.
    """
    agent = _agent(box)
    url = f"{box.router_url}/v1/chat/completions"
    body = _body(stream=True)
    obj = payment(offer(http, url, body), agent)
    obj["extensions"] = {"payment-identifier": {"info": {"id": "pay_" + secrets.token_hex(16)}}}
    paid = header(obj)
    observer.control(break_after=3, break_models=["gpt-4o-mini"])
    first = http.post(url, json=body, headers=paid)
    assert first.status_code == 200 and "stream broke" in first.text
    observer.control(break_after=None, break_models=[])
    calls = observer.upstream_calls()
    again = http.post(url, json=body, headers=paid)
    assert again.status_code == 200
    assert "[DONE]" in again.text and observer.upstream_calls() == calls + 1, (
        "the same payment returned the cached broken stream: " + _words(again.text)
    )


def test_a_model_that_keeps_breaking_is_served_again_once(box: Sandbox, http: httpx.Client, observer: Observer) -> None:
    """FIXED (passes; was a finding of the review, failing on 7ff9df3) - MEDIUM/LOW: one payment, unbounded upstream calls and free content.

    _serve_again (gate.py:400-417) re-runs a broken stream for free and _finish writes it back
    as 'broken' when it breaks again (streaming.py:263-270), which makes it eligible again: no
    attempt counter. Against a request that deterministically breaks mid-stream (a provider's
    mid-stream error on that prompt, a stream read time-out on long outputs) each presentation
    of the same payment is another upstream call and another chunk of content for free. The
    README promises one second upstream call.

    Fix: count re-serves on the record (e.g. serve_again_count) and stop after one or two
    (then answer with the kept transcript, or refund-equivalent handling).
    """
    agent = _agent(box)
    url = f"{box.router_url}/v1/chat/completions"
    body = _body(stream=True)
    paid = header(payment(offer(http, url, body), agent))
    observer.control(break_after=3, break_models=["gpt-4o-mini"])  # this model breaks every time
    before = box.token.balance_of(agent.address)
    calls = observer.upstream_calls()
    free_words = []
    for _ in range(5):
        response = http.post(url, json=body, headers=paid)
        assert response.status_code == 200
        free_words.append(_words(response.text))
    assert box.token.balance_of(agent.address) < before  # paid once
    served = observer.upstream_calls() - calls
    assert served <= 2, f"one payment, {served} upstream calls; content each time: {free_words}"


def test_a_funded_payer_whose_calls_all_fail_leaves_no_records(
    box: Sandbox, proxy: RpcFaultProxy, http: httpx.Client, observer: Observer
) -> None:
    """FIXED (passes; was a finding of the review, failing on 7ff9df3) - LOW/MEDIUM: permanent journal growth for free, with attacker-chosen bulk.

    Since 0912655 a payment that fails verification is discarded (see the BLOCKED test below),
    but one that verifies only needs a balance >= the quote, never spent. Any request the model
    refuses (a provider 400 on that prompt, a context-length refusal our estimate missed) is
    'released' and kept forever (gate.py _paid: attempt.release; records are never deleted),
    each with the whole payment header: here ~5 KB of padding in 'extensions', which the
    fingerprint covers and the record stores. Fresh nonces are free, the balance never moves.

    Fix: a released record of a payment that was never served (attempts == 1, nothing
    broadcast) can be discarded like a refused one, or expire (TTL after validBefore); cap
    and/or strip unknown extensions before storing the payment.
    """
    agent = _agent(box)
    observer.control(fail_next=1000, fail_status=400)  # the model refuses this prompt
    # a router of our own: the refusals open breakers, which must not leak into other tests
    with _router(box, proxy.url) as router, redis.Redis.from_url(REDIS_URL) as r:
        index = f"{router.namespace}:{{j}}:time"
        for _ in range(10):
            body = _body()
            padded = payment(offer(http, router.chat, body), agent)
            padded["extensions"] = {"padding": {"info": {"x": "A" * 4000}}}
            assert http.post(router.chat, json=body, headers=header(padded)).status_code == 502
        assert box.token.balance_of(agent.address) == 5_000_000  # never paid anything
        kept = [m.decode() for m in r.zrange(index, 0, -1)]
        sizes = [int(r.memory_usage(f"{router.namespace}:{{j}}:rec:{m}", samples=0) or 0) for m in kept]
    assert not kept, f"10 payments that never paid left {len(kept)} permanent records of ~{max(sizes)} bytes each"


# --------------------------------------------------------------------------------------------
# attacks that are blocked (each passes)
# --------------------------------------------------------------------------------------------


def test_held_stream_whose_payment_is_resolved_mid_stream_keeps_its_answer(
    box: Sandbox, proxy: RpcFaultProxy, http: httpx.Client, observer: Observer
) -> None:
    """BLOCKED (passes since 7ff9df3; it failed on 48cf273..91fbe98, HIGH): a held stream whose
    transfer went pending keeps buffering the answer; the payer's retry (or a reconciler pass)
    resolves the record to settled before the model finishes. StreamSettlement._finish used to
    write PENDING expecting [PENDING, SETTLING], found SETTLED, and dropped the transcript: the
    payer had paid and every later presentation got 402 'its answer is no longer kept'.
    PaymentAttempt.finish now adds the answer to the settled record. Kept as a regression test.
    """
    table = box.table.model_copy(update={"streaming": StreamingPolicy(settlement="before_first_byte")})
    agent = _agent(box)
    with _router(box, proxy.url, table=table, receipt_timeout=1.0) as router:
        body = _body(stream=True, max_tokens=200)
        o = offer(http, router.chat, body)
        amount = int(o["accepts"][0]["amount"])
        paid = payment(o, agent)
        observer.control(chunk_delay_ms=150)  # ~5 s of generation
        proxy.set_mode("hide_receipt")  # mined, but the receipt looks late: pending after 1 s

        def first() -> httpx.Response:
            with httpx.Client(timeout=60) as client:
                return client.post(router.chat, json=body, headers=header(paid))

        thread, result = _in_thread(first)
        _wait_for(lambda: router.record(agent.address, _nonce(paid)).get("state") == State.PENDING, what="pending")
        time.sleep(0.3)
        # the payer retries its pending payment while the model is still writing the answer
        retry = http.post(router.chat, json=body, headers=header(paid))
        assert retry.status_code == 402
        thread.join(60)
        assert result["value"].status_code == 402  # the first request: pending, no content
        proxy.set_mode("pass")
        assert box.token.balance_of(agent.address) == 5_000_000 - amount  # the money moved
        assert router.record(agent.address, _nonce(paid))["state"] == State.SETTLED
        again = http.post(router.chat, json=body, headers=header(paid))
        assert again.status_code == 200, f"paid {amount}; the same payment now gets: {_why(again)}"
        assert "[DONE]" in again.text


def test_replay_of_a_pending_payment_while_the_rpc_is_down_is_answered_pending(
    box: Sandbox, proxy: RpcFaultProxy, http: httpx.Client, observer: Observer
) -> None:
    """BLOCKED (passes since 7ff9df3; it failed on 48cf273..91fbe98, LOW): an in-doubt payment
    presented again while the chain RPC is unreachable used to get a bare 500 (the ChainError of
    Resolver.resolve escaped _replay); it is now answered from the journal: 402 pending with
    its hash.
    """
    agent = _agent(box)
    with _router(box, proxy.url) as router:
        body = _body()
        paid = header(payment(offer(http, router.chat, body), agent))
        proxy.set_mode("hide_receipt")
        first = http.post(router.chat, json=body, headers=paid)
        assert first.status_code == 402 and _receipt(first)["errorReason"] == "settlement_pending"
        proxy.set_mode("down")
        again = http.post(router.chat, json=body, headers=paid)
        proxy.set_mode("pass")
        assert again.status_code == 402, _why(again)
        assert _receipt(again)["transaction"] == _receipt(first)["transaction"]


def test_forged_payments_leave_no_journal_record(box: Sandbox, http: httpx.Client, observer: Observer) -> None:
    """BLOCKED (passes; fixed during this review by 0912655 - it failed on 48cf273): payments
    with a bad signature in another payer's name, padded to ~6 KB, leave no journal record."""
    victim = box.agents[1]
    forger = LocalSigner.generate()
    url = f"{box.router_url}/v1/chat/completions"
    index = f"{box.namespace}:{{j}}:time"
    with redis.Redis.from_url(REDIS_URL) as r:
        before = int(r.zcard(index))
        body = _body()
        o = offer(http, url, body)
        with observer.unchanged(victim.address):
            for _ in range(20):
                forged = payment(o, victim, sign_with=forger)
                forged["extensions"] = {"padding": {"info": {"x": "A" * 4000}}}
                response = http.post(url, json=body, headers=header(forged))
                assert rejection(response) == (402, "invalid_exact_evm_payload_signature")
        assert int(r.zcard(index)) == before


def test_local_facilitator_front_run_still_answers(
    box: Sandbox, proxy: RpcFaultProxy, http: httpx.Client, observer: Observer
) -> None:
    """BLOCKED (passes): the same front-run against the local facilitator: the payment stands
    (found from the token's logs), the payer gets its answer, the record is settled."""
    agent = _agent(box)
    with _router(box, proxy.url) as router:
        body = _body()
        o = offer(http, router.chat, body)
        amount = int(o["accepts"][0]["amount"])
        paid = payment(o, agent)
        observer.control(delay_ms=700)
        thread, result = _in_thread(lambda: httpx.post(router.chat, json=body, headers=header(paid), timeout=30))
        time.sleep(0.3)
        _submit_payment_on_chain(box, paid)
        thread.join(30)
        assert result["value"].status_code == 200, result["value"].text
        assert box.token.balance_of(agent.address) == 5_000_000 - amount
        assert router.record(agent.address, _nonce(paid))["state"] == State.SETTLED


def test_the_same_authorization_with_anything_changed_is_refused(
    box: Sandbox, http: httpx.Client, observer: Observer
) -> None:
    """BLOCKED (passes): replaying a settled payment for another body, with a payment-identifier
    added, or with a different resource/accepted echo is refused as nonce_already_used without
    a model call or a transfer, and the original still fetches its answer for free."""
    agent = _agent(box)
    url = f"{box.router_url}/v1/chat/completions"
    body = _body()
    o = offer(http, url, body)
    obj = payment(o, agent)
    first = http.post(url, json=body, headers=header(obj))
    assert first.status_code == 200
    other_body = _body()
    offer(http, url, other_body)  # a live quote for the other body
    with_id = {**obj, "extensions": {"payment-identifier": {"info": {"id": "pay_" + secrets.token_hex(16)}}}}
    other_resource = {**obj, "resource": {"url": "http://elsewhere/v1/chat/completions"}}
    with observer.unchanged(agent.address, box.operator.address):
        assert (
            rejection(http.post(url, json=other_body, headers=header(obj)))[1] == "invalid_exact_evm_nonce_already_used"
        )
        for variant in (with_id, other_resource):
            assert (
                rejection(http.post(url, json=body, headers=header(variant)))[1]
                == "invalid_exact_evm_nonce_already_used"
            )
        # also through the anthropic endpoint (another request digest)
        msg = {"model": "gpt-4o-mini", "max_tokens": 60, "messages": [{"role": "user", "content": "x"}]}
        offer(http, f"{box.router_url}/v1/messages", msg)
        assert http.post(f"{box.router_url}/v1/messages", json=msg, headers=header(obj)).status_code == 402
        again = http.post(url, json=body, headers=header(obj))
        assert again.status_code == 200 and again.json() == first.json()


def test_a_debtor_is_refused_streams_on_both_endpoints(box: Sandbox, http: httpx.Client, observer: Observer) -> None:
    """BLOCKED (passes): a payer that cancelled mid-stream (owed) cannot stream through
    /v1/messages either, nor with a far-future validBefore (debts are per payer address, and
    addresses are checksummed before use, so letter case does not make a new payer)."""
    agent = _agent(box)
    url = f"{box.router_url}/v1/chat/completions"
    body = _body(stream=True, max_tokens=200)
    paid = payment(offer(http, url, body), agent)
    observer.control(delay_ms=1200, chunk_delay_ms=40)

    def stream() -> httpx.Response:
        with httpx.Client(timeout=30) as client:
            return client.post(url, json=body, headers=header(paid))

    thread, result = _in_thread(stream)
    time.sleep(0.3)
    _cancel(box, agent, _nonce(paid))
    # a reconciler pass seeing the cancelled authorization leaves the stream's record to its
    # worker (releasing it would forget the debt)
    assert reconcile_now(box, agent.address, _nonce(paid)) in ("claimed", "serving")
    thread.join(30)
    assert "the stream was cut" in result["value"].text
    observer.control(delay_ms=0, chunk_delay_ms=0)
    messages = f"{box.router_url}/v1/messages"
    msg = {"model": "gpt-4o-mini", "max_tokens": 40, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    lower = payment(offer(http, messages, msg), agent, valid_before=2**255)
    lower["payload"]["authorization"]["from"] = agent.address.lower()
    with observer.unchanged(agent.address):
        assert rejection(http.post(messages, json=msg, headers=header(lower))) == (402, "payer_has_unpaid_stream")


def test_a_tiny_valid_before_charges_nothing_and_calls_no_model(
    box: Sandbox, http: httpx.Client, observer: Observer
) -> None:
    """BLOCKED (passes): an authorization that expires 8 s from now passes verification (> 6 s
    margin) but no model call is started that could not be settled in time: 502, nothing moved,
    no upstream call, and (stream or not) no record is left owed."""
    agent = _agent(box)
    url = f"{box.router_url}/v1/chat/completions"
    for body in (_body(), _body(stream=True)):
        paid = payment(offer(http, url, body), agent, valid_before=int(time.time()) + 8)
        with observer.unchanged(agent.address):
            response = http.post(url, json=body, headers=header(paid))
        assert response.status_code == 502, response.text


def test_a_client_timeout_during_a_plain_settlement_still_gets_its_answer(
    box: Sandbox, proxy: RpcFaultProxy, http: httpx.Client, observer: Observer
) -> None:
    """BLOCKED (passes): a non-streaming client that gives up while we settle is charged, and the
    same payment fetches the answer (no second model call, no second charge)."""
    agent = _agent(box)
    with _router(box, proxy.url) as router:
        body = _body()
        o = offer(http, router.chat, body)
        amount = int(o["accepts"][0]["amount"])
        paid = payment(o, agent)
        observer.control(delay_ms=700)
        threading.Timer(0.3, proxy.set_mode, args=("pass", 1500)).start()
        with pytest.raises(httpx.ReadTimeout), httpx.Client(timeout=httpx.Timeout(2.0)) as impatient:
            impatient.post(router.chat, json=body, headers=header(paid))
        _wait_for(lambda: router.record(agent.address, _nonce(paid)).get("state") == State.SETTLED, what="settled")
        proxy.set_mode("pass", 0)
        observer.control(delay_ms=0)
        calls = observer.upstream_calls()
        again = http.post(router.chat, json=body, headers=header(paid))
        assert again.status_code == 200 and again.json()["choices"][0]["message"]["content"].startswith("[gpt-4o-mini]")
        assert observer.upstream_calls() == calls
        assert box.token.balance_of(agent.address) == 5_000_000 - amount


def test_a_payer_cannot_stream_beyond_its_unconfirmed_limit(
    box: Sandbox, proxy: RpcFaultProxy, http: httpx.Client, observer: Observer
) -> None:
    """BLOCKED (passes): with the chain not confirming (receipts hidden), a payer already at its
    max_unconfirmed_per_payer cannot start a second stream on an unconfirmed payment: the
    second one is held, its transfer goes pending and it gets no content (402 pending)."""
    probe = offer(http, f"{box.router_url}/v1/chat/completions", _body(stream=True, max_tokens=200))
    quote = int(probe["accepts"][0]["amount"])
    limit = Decimal(quote * 3 // 2) / 10**box.table.asset.decimals
    policy = StreamingPolicy.model_validate({"max_unconfirmed_per_payer": str(limit), "max_unconfirmed_total": "100"})
    table = box.table.model_copy(update={"streaming": policy})
    agent = _agent(box)
    with _router(box, proxy.url, table=table, receipt_timeout=1.0) as router:
        bodies = [_body(stream=True, max_tokens=200), _body(stream=True, max_tokens=200)]
        paid = [payment(offer(http, router.chat, b), agent) for b in bodies]
        observer.control(chunk_delay_ms=150)
        proxy.set_mode("hide_receipt")

        def stream(i: int) -> httpx.Response:
            with httpx.Client(timeout=60) as client:
                return client.post(router.chat, json=bodies[i], headers=header(paid[i]))

        first, result = _in_thread(lambda: stream(0))
        _wait_for(lambda: router.record(agent.address, _nonce(paid[0])).get("state") == State.PENDING, what="pending")
        second = stream(1)
        first.join(60)
        assert result["value"].status_code == 200  # the first streamed on its unconfirmed payment
        assert second.status_code == 402 and _receipt(second)["errorReason"] == "settlement_pending"
        assert "[gpt-4o-mini]" not in second.text
