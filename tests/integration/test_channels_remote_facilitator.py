"""Channels settled through a remote facilitator: the official x402 facilitator (its
batch-settlement scheme) over HTTP sends the deposit, the claims, the settle and the refund;
payrouter's gas wallet sends nothing.

The official Python client pays: a deposit, vouchers charged by the token, a claimer pass
(claim + settle through the facilitator), more vouchers, a refund (claim + refund in one
multicall, through the facilitator), a last pass. The chain is the judge: the payer spent
exactly the sum of the charges and ``pay_to`` received exactly that. Both ways the receiver
authorizer can be held: by the facilitator (payrouter signs nothing) and by payrouter (the
facilitator has no authorizer key and gets our signatures).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from x402.http.clients import x402HttpxClient
from x402.mechanisms.evm.batch_settlement.client import RefundOptions

from payrouter.app import create_app
from payrouter.chain import ChainClient
from payrouter.channels import open_channel_store
from payrouter.channels.claimer import Claimer, ClaimReport
from payrouter.channels.contract import BatchSettlementContract
from payrouter.facilitator import RemoteFacilitator
from payrouter.facilitator.channels import FacilitatorSettler
from payrouter.journal import State
from payrouter.journal.open import open_journal
from payrouter.ledger import fetch_records
from payrouter.sandbox.dev import Sandbox
from payrouter.sandbox.serving import serve_in_thread
from payrouter.settings import ConfigError
from payrouter.store import RedisStore
from pricing import PriceTable
from tests.delay_proxy import DelayProxy
from tests.redis_keys import delete_namespace, run_token
from wallets import LocalSigner

from .conftest import REDIS_URL, Observer, router_settings
from .official_facilitator import facilitator_app
from .payments import rejection
from .test_channels_official_client import _official_client, _receipt, usage_price

TOKEN = "test-channel-facilitator-token"
HEADERS = {"*": {"Authorization": SecretStr(f"Bearer {TOKEN}")}}


class Remote:
    """A payrouter whose channels are settled by an official facilitator, on a pay_to of its own."""

    def __init__(
        self, box: Sandbox, facilitator_url: str, calls: dict[str, int], our_key: LocalSigner | None, gas: str = ""
    ) -> None:
        self.box = box
        self.gas = gas  # the facilitator's gas wallet
        self.facilitator_url = facilitator_url
        self.calls = calls
        self.our_key = our_key
        self.pay_to = LocalSigner.generate().address  # fresh: what it receives is ours alone
        self.table: PriceTable = box.table.model_copy(update={"pay_to": self.pay_to})
        self.namespace = f"payrouter-test-remote-channels-{run_token()}"

    def router(self, via: str = "", **overrides: Any) -> Any:
        """A payrouter of this set-up (``via``: another URL to reach the facilitator by)."""
        fields: dict[str, Any] = {"claim_poll": 0, **overrides}
        settings = router_settings(
            self.box,
            self.table,
            namespace=self.namespace,
            facilitator="remote",
            facilitator_url=via or self.facilitator_url,
            facilitator_headers=HEADERS,
            gas_key=None,
            channel_authorizer_key=SecretStr(self.our_key.unsafe_export_private_key()) if self.our_key else None,
            channel_facilitator_authorizer=self.our_key is None,
            **fields,
        )
        return create_app(settings)

    def claim_pass(self, receiver_authorizer: str, via: str = "", clean: bool = True) -> ClaimReport:
        """One claimer pass through the facilitator (``via``: another URL to reach it by),
        claiming everything charged, then settling; ``clean``: it must end without an error."""

        async def run() -> ClaimReport:
            chain = ChainClient(self.box.chain.rpc_url)
            remote = RemoteFacilitator(via or self.facilitator_url, {"*": {"Authorization": f"Bearer {TOKEN}"}})
            store = RedisStore(REDIS_URL, self.namespace)
            channels = open_channel_store(REDIS_URL, self.namespace)
            journal = open_journal(REDIS_URL, self.namespace)
            try:
                reader = BatchSettlementContract(chain, None, self.box.chain.chain_id)
                settler = FacilitatorSettler(
                    remote, reader, chain, self.table.network, receiver_authorizer, self.our_key
                )
                claimer = Claimer(
                    channels, settler, journal, store, self.pay_to, self.table.asset.address, 0, 0,
                    chain=chain, network=self.table.network,
                )  # fmt: skip
                report = await claimer.run_once(wait=10)
                assert not report.skipped
                if clean:
                    assert not report.errors and not report.in_doubt, report
                return report
            finally:
                for closing in (journal, channels, store, remote, chain):
                    await closing.close()

        return asyncio.run(run())


@pytest.fixture(params=["facilitator", "payrouter"], ids=["the-facilitator-signs", "payrouter-signs"])
def remote(request: pytest.FixtureRequest, box: Sandbox) -> Iterator[Remote]:
    yield from _remote(box, LocalSigner.generate() if request.param == "payrouter" else None)


@pytest.fixture
def facilitated(box: Sandbox) -> Iterator[Remote]:
    """A remote set-up whose facilitator holds the authorizer."""
    yield from _remote(box, None)


def _remote(box: Sandbox, our_key: LocalSigner | None) -> Iterator[Remote]:
    gas = box.chain.new_account()
    their_key = LocalSigner.generate().unsafe_export_private_key() if our_key is None else None
    app, calls = facilitator_app(
        gas.unsafe_export_private_key(),
        box.chain.rpc_url,
        box.chain.network,
        TOKEN,
        channels=True,
        authorizer_key=their_key,
    )
    with serve_in_thread(app) as url:
        setup = Remote(box, url, calls, our_key, gas.address)
        try:
            yield setup
        finally:
            delete_namespace(REDIS_URL, setup.namespace)


def _offer(http: httpx.Client, url: str) -> dict[str, Any]:
    response = http.post(url, json={"model": "auto", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 402
    offer: dict[str, Any] = json.loads(base64.b64decode(response.headers["payment-required"]))
    return offer


def test_channels_are_deposited_claimed_settled_and_refunded_through_the_facilitator(
    remote: Remote, box: Sandbox, tmp_path: Path
) -> None:
    payer = LocalSigner.generate()
    box.token.mint(payer.address, 20_000_000)
    client, batch = _official_client(box, payer, tmp_path / "channels")
    charges: list[int] = []
    channel = {"id": ""}

    with serve_in_thread(remote.router()) as router, httpx.Client(timeout=30) as http:
        url = f"{router}/v1/chat/completions"
        offer = _offer(http, url)
        batch_offer = next(a for a in offer["accepts"] if a["scheme"] == "batch-settlement")
        authorizer = batch_offer["extra"]["receiverAuthorizer"]
        if remote.our_key is not None:
            assert authorizer == remote.our_key.address
        else:
            facilitator_kinds = http.get(f"{remote.facilitator_url}/supported").json()["kinds"]
            (kind,) = [k for k in facilitator_kinds if k["scheme"] == "batch-settlement"]
            assert authorizer == kind["extra"]["receiverAuthorizer"]

        async def calls(n: int, first: int) -> None:
            async with x402HttpxClient(client, timeout=30) as paying:
                for i in range(first, first + n):
                    body = {
                        "model": "gpt-4o",
                        "max_tokens": [8, 200, 1000, 4096][i % 4],
                        "messages": [{"role": "user", "content": f"call {i}: " + "more " * (40 * (i % 5))}],
                    }
                    response = await paying.post(url, json=body)
                    assert response.status_code == 200, response.text
                    receipt = _receipt(response.headers)
                    usage = response.json()["usage"]
                    expected = usage_price(remote.table, usage)
                    assert int(receipt["extra"]["chargedAmount"]) == expected
                    charges.append(expected)
                    channel["id"] = receipt["extra"]["channelState"]["channelId"]

        before = box.token.balance_of(payer.address)
        settled_before = remote.calls["settle"]
        asyncio.run(calls(6, 0))
        assert remote.calls["settle"] == settled_before + 1  # the deposit; vouchers never reach it

        first = remote.claim_pass(authorizer)  # claim + settle, both sent by the facilitator
        assert first.claimed == sum(charges) and first.settled == sum(charges) and len(first.claim_txs) == 1
        assert box.token.balance_of(remote.pay_to) == sum(charges)

        asyncio.run(calls(4, 6))
        refund = batch.refund(url, RefundOptions())
        assert refund.success
    spent = before - box.token.balance_of(payer.address)
    assert spent == sum(charges)  # deposit minus refund: exactly what was charged
    last = remote.claim_pass(authorizer)  # the refund claimed the rest; the settle pays it out
    assert last.claim_txs == [] and last.settled == sum(charges[6:])
    assert box.token.balance_of(remote.pay_to) == sum(charges)

    async def journaled() -> list[Any]:
        journal = open_journal(REDIS_URL, remote.namespace)
        try:
            return await fetch_records(journal)
        finally:
            await journal.close()

    records = asyncio.run(journaled())
    by_path: dict[str, int] = {}
    for r in records:
        if r.scheme == "batch-settlement" and r.state == State.SETTLED:
            by_path[r.path] = by_path.get(r.path, 0) + r.amount
    assert by_path.get("claim") == sum(charges)  # one claim by the claimer, one inside the refund
    assert by_path.get("settle") == sum(charges)
    assert by_path.get("deposit") == before - box.token.balance_of(payer.address) + by_path.get("refund", 0)
    # every transaction was sent by the facilitator's wallet: payrouter needs no gas
    txs = {r.tx for r in records if r.scheme == "batch-settlement" and r.tx}
    assert len(txs) == 5  # deposit, claim, settle, refund (with its claim), settle
    assert {box.chain.w3.eth.get_transaction(tx)["from"] for tx in txs} == {remote.gas}


def test_a_deposit_the_facilitator_refuses_reaches_the_payer_and_serves_nothing(
    remote: Remote, box: Sandbox, observer: Observer, tmp_path: Path
) -> None:
    broke = LocalSigner.generate()  # no tokens: the facilitator's balance check refuses the deposit
    client, _ = _official_client(box, broke, tmp_path / "broke")
    upstream = observer.upstream_calls()

    async def call(url: str) -> httpx.Response:
        async with x402HttpxClient(client, timeout=30) as paying:
            body = {"model": "gpt-4o", "max_tokens": 30, "messages": [{"role": "user", "content": "hello"}]}
            response: httpx.Response = await paying.post(url, json=body)
            return response

    with serve_in_thread(remote.router()) as router:
        response = asyncio.run(call(f"{router}/v1/chat/completions"))
    status, reason = rejection(response)
    assert status == 402
    assert reason.startswith("invalid_batch_settlement_evm_") and "insufficient" in reason
    assert observer.upstream_calls() == upstream
    assert box.token.balance_of(remote.pay_to) == 0


async def test_startup_needs_a_facilitator_that_settles_channels_and_an_authorizer(box: Sandbox) -> None:
    gas = box.chain.new_account().unsafe_export_private_key()
    exact_only, calls = facilitator_app(gas, box.chain.rpc_url, box.chain.network, TOKEN)
    with serve_in_thread(exact_only) as url:
        router = Remote(box, url, calls, None).router()
        with pytest.raises(ConfigError, match=r"does not settle 'batch-settlement' payments on eip155:31337"):
            async with router.router.lifespan_context(router):
                pass
    keyless, calls = facilitator_app(gas, box.chain.rpc_url, box.chain.network, TOKEN, channels=True)
    with serve_in_thread(keyless) as url:
        router = Remote(box, url, calls, None).router()
        with pytest.raises(ConfigError, match="holds no receiver authorizer key.*authorizer_key_env"):
            async with router.router.lifespan_context(router):
                pass
        # with our own key the same facilitator will do: it is sent our signatures
        ours = Remote(box, url, calls, LocalSigner.generate())
        try:
            router = ours.router()
            async with router.router.lifespan_context(router) as state:
                assert state["services"].schemes
        finally:
            delete_namespace(REDIS_URL, ours.namespace)


def _charge_a_channel(remote: Remote, box: Sandbox, tmp_path: Path, calls: int, **router: Any) -> tuple[str, int]:
    """A fresh payer opens a channel on ``remote``'s router (``router``: its settings) and pays
    ``calls`` vouchers; the receiver authorizer its channel names and the sum charged."""
    payer = LocalSigner.generate()
    box.token.mint(payer.address, 20_000_000)
    client, _ = _official_client(box, payer, tmp_path / "channels")
    charged = 0
    with serve_in_thread(remote.router(**router)) as router_url:
        url = f"{router_url}/v1/chat/completions"

        async def pay() -> str:
            nonlocal charged
            async with x402HttpxClient(client, timeout=30) as paying:
                for i in range(calls):
                    body = {"model": "gpt-4o", "max_tokens": 300, "messages": [{"role": "user", "content": f"{i}"}]}
                    response = await paying.post(url, json=body)
                    assert response.status_code == 200, response.text
                    charged += int(_receipt(response.headers)["extra"]["chargedAmount"])
            with httpx.Client(timeout=30) as http:
                offer = _offer(http, url)
            (batch,) = [a for a in offer["accepts"] if a["scheme"] == "batch-settlement"]
            return str(batch["extra"]["receiverAuthorizer"])

        authorizer = asyncio.run(pay())
    return authorizer, charged


def test_a_claim_whose_reply_is_lost_is_found_on_chain_and_counted_once(
    facilitated: Remote, box: Sandbox, tmp_path: Path
) -> None:
    authorizer, charged = _charge_a_channel(facilitated, box, tmp_path, 3)
    port = int(facilitated.facilitator_url.rsplit(":", 1)[1])
    proxy = DelayProxy("127.0.0.1", port)
    proxy.drop_replies = True  # the facilitator sends the claim; its answer never arrives
    proxy.start()
    try:
        lost = facilitated.claim_pass(authorizer, via=f"http://127.0.0.1:{proxy.port}", clean=False)
    finally:
        proxy.stop()
    assert lost.claim_txs == [] and lost.claimed == 0  # in doubt: nothing counted, nothing sent again
    assert len(lost.errors) == 1 and "in doubt without a transaction hash" in lost.errors[0]
    assert facilitated.calls["settle"] == 2  # the deposit, and the claim it did send (no settle after it)

    async def receiver_totals() -> tuple[int, int]:
        chain = ChainClient(box.chain.rpc_url)
        try:
            reader = BatchSettlementContract(chain, None, box.chain.chain_id)
            return await reader.receiver_totals(facilitated.pay_to, facilitated.table.asset.address)
        finally:
            await chain.close()

    assert asyncio.run(receiver_totals()) == (charged, 0)  # mined: claimed on chain, not yet paid out
    found = facilitated.claim_pass(authorizer)  # the claim is found in the chain's logs
    assert found.claimed == charged and found.settled == charged
    assert box.token.balance_of(facilitated.pay_to) == charged

    async def claims() -> list[Any]:
        journal = open_journal(REDIS_URL, facilitated.namespace)
        try:
            return [r for r in await fetch_records(journal) if r.path == "claim" and r.state == State.SETTLED]
        finally:
            await journal.close()

    (claim,) = asyncio.run(claims())  # one claim transaction, journaled once
    assert claim.amount == charged


def test_an_unreachable_facilitator_ends_the_pass_with_one_attempt(
    facilitated: Remote, box: Sandbox, tmp_path: Path
) -> None:
    authorizer, charged = _charge_a_channel(facilitated, box, tmp_path, 2)
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    report = facilitated.claim_pass(authorizer, via=f"http://127.0.0.1:{closed}", clean=False)
    assert report.claimed == 0 and report.claim_txs == [] and report.in_doubt == []
    assert len(report.errors) == 1 and "could not be reached" in report.errors[0]
    later = facilitated.claim_pass(authorizer)  # back: the next pass claims it all
    assert later.claimed == charged and later.settled == charged


@contextlib.contextmanager
def _settle_answers_lost(remote: Remote) -> Iterator[str]:
    """A router of ``remote`` that reaches its facilitator through a proxy dropping every answer
    to ``/settle`` (the facilitator still acts); its URL."""
    proxy = DelayProxy("127.0.0.1", int(remote.facilitator_url.rsplit(":", 1)[1]))
    proxy.drop_replies_to = b"POST /settle"
    proxy.start()
    try:
        with serve_in_thread(remote.router(via=f"http://127.0.0.1:{proxy.port}")) as router:
            yield router
    finally:
        proxy.stop()


def test_a_deposit_whose_answer_is_lost_is_found_on_chain_and_served_once(
    facilitated: Remote, box: Sandbox, tmp_path: Path
) -> None:
    payer = LocalSigner.generate()
    box.token.mint(payer.address, 20_000_000)
    client, _ = _official_client(box, payer, tmp_path / "channels")
    before = box.token.balance_of(payer.address)
    with _settle_answers_lost(facilitated) as router:  # the facilitator deposits; its answer never arrives

        async def call() -> httpx.Response:
            async with x402HttpxClient(client, timeout=30) as paying:
                body = {"model": "gpt-4o", "max_tokens": 30, "messages": [{"role": "user", "content": "hi"}]}
                response: httpx.Response = await paying.post(f"{router}/v1/chat/completions", json=body)
                return response

        response = asyncio.run(call())
    assert response.status_code == 200, response.text
    receipt = _receipt(response.headers)
    deposited = before - box.token.balance_of(payer.address)
    assert deposited > 0 and int(receipt["extra"]["channelState"]["balance"]) == deposited
    assert facilitated.calls["settle"] == 1  # one deposit, sent once

    async def deposits() -> list[Any]:
        journal = open_journal(REDIS_URL, facilitated.namespace)
        try:
            return [r for r in await fetch_records(journal) if r.path == "deposit"]
        finally:
            await journal.close()

    (record,) = asyncio.run(deposits())
    assert record.amount == deposited and record.tx == receipt["transaction"]
    assert box.chain.w3.eth.get_transaction(record.tx)["from"] == facilitated.gas


def test_the_servers_own_claimer_claims_through_the_facilitator(
    facilitated: Remote, box: Sandbox, tmp_path: Path
) -> None:
    claiming: dict[str, Any] = {"claim_poll": 0.3, "claim_interval": 0}  # a pass every 0.3 s, claiming all
    _, charged = _charge_a_channel(facilitated, box, tmp_path, 3, **claiming)
    # that router stopped with its claimer (maybe before a pass claimed): this one finishes it
    with serve_in_thread(facilitated.router(**claiming)):
        deadline = time.monotonic() + 20
        while box.token.balance_of(facilitated.pay_to) < charged and time.monotonic() < deadline:
            time.sleep(0.1)
    assert box.token.balance_of(facilitated.pay_to) == charged


def test_with_every_settle_answer_lost_deposit_and_refund_are_found_on_chain(
    facilitated: Remote, box: Sandbox, tmp_path: Path
) -> None:
    payer = LocalSigner.generate()
    box.token.mint(payer.address, 20_000_000)
    client, batch = _official_client(box, payer, tmp_path / "channels")
    before = box.token.balance_of(payer.address)
    charges: list[int] = []
    with _settle_answers_lost(facilitated) as router:  # the facilitator acts; none of its answers arrive
        url = f"{router}/v1/chat/completions"

        async def calls() -> None:
            async with x402HttpxClient(client, timeout=30) as paying:
                for i in range(3):
                    body = {"model": "gpt-4o", "max_tokens": 200, "messages": [{"role": "user", "content": f"{i}"}]}
                    response = await paying.post(url, json=body)
                    assert response.status_code == 200, response.text
                    charges.append(int(_receipt(response.headers)["extra"]["chargedAmount"]))

        asyncio.run(calls())
        assert batch.refund(url, RefundOptions()).success
    assert before - box.token.balance_of(payer.address) == sum(charges)  # deposit minus refund
    assert facilitated.calls["settle"] == 2  # the deposit and the refund, each sent once

    async def journaled() -> dict[str, list[int]]:
        journal = open_journal(REDIS_URL, facilitated.namespace)
        try:
            out: dict[str, list[int]] = {}
            for r in await fetch_records(journal):
                if r.scheme == "batch-settlement" and r.state == State.SETTLED:
                    out.setdefault(r.path, []).append(r.amount)
            return out
        finally:
            await journal.close()

    found = asyncio.run(journaled())
    deposit = found["deposit"]
    assert len(deposit) == 1 and found["refund"] == [deposit[0] - sum(charges)]
    assert found["claim"] == [sum(charges)]  # claimed inside the refund, counted from its receipt
