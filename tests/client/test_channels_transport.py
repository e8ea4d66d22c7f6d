"""Paying batch-settlement offers through the payment transport, against a stand-in server that
checks every payload with the official SDK (tests/client/batch_server.py): deposits then vouchers,
the budget counting deposits only, charges below the maximum, corrective 402 recovery (proven by
the agent's own voucher, refused when forged, or read on chain), refunds and scheme choice."""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from payrouter.client import (
    AsyncPaymentTransport,
    ChannelOptions,
    FileBudgetStore,
    FileChannelStore,
    MemoryBudgetStore,
    MemoryChannelStore,
    PaymentRefused,
    PaymentTransport,
    RefundError,
    SpendingPolicy,
    receipt_of,
    refund_channel,
)
from payrouter.client.channels import update_channel
from payrouter.client.vouchers import ChannelResponseError, read_onchain_channel
from payrouter.devchain import DevChain, DevToken
from tests.client.batch_server import BatchServer
from wallets import LocalSigner

URL = "http://router/v1/x"


def _server(**kw: object) -> BatchServer:
    return BatchServer(
        "eip155:31337",
        "0x" + "44" * 20,
        LocalSigner.generate().address,
        LocalSigner.generate().address,
        **kw,  # type: ignore[arg-type]
    )


def _client(
    agent: LocalSigner,
    server: BatchServer,
    options: ChannelOptions | None,
    policy: SpendingPolicy | None = None,
    budget: object = None,
    scheme: str = "auto",
) -> httpx.Client:
    transport = PaymentTransport(
        agent,
        policy or SpendingPolicy(max_per_call=10_000),
        budget,  # type: ignore[arg-type]
        transport=server.transport(),
        channels=options,
        scheme=scheme,
    )
    return httpx.Client(transport=transport)


def _spent(path: Path) -> int:
    return sum(amount for _, amount, _ in json.loads(path.read_text()))


def test_deposit_once_then_vouchers(tmp_path: Path) -> None:
    agent, server = LocalSigner.generate(), _server(charge=700)
    store, spend = FileChannelStore(tmp_path / "channels"), tmp_path / "spend.json"
    with _client(agent, server, ChannelOptions(store=store), budget=FileBudgetStore(spend)) as http:
        first = http.get(URL)
        assert first.status_code == 200 and first.json() == {"answer": 42}
        receipt = receipt_of(first)
        assert receipt is not None and receipt.scheme == "batch-settlement"
        assert (receipt.amount, receipt.charged, receipt.deposit) == (1_000, 700, 5_000)  # 5 × amount
        inner = server.seen[-1]["payload"]
        assert inner["type"] == "deposit" and inner["voucher"]["maxClaimableAmount"] == "1000"
        assert _spent(spend) == 5_000  # the deposit is what left the wallet
        for n in range(2, 6):
            reply = http.get(URL)
            receipt = receipt_of(reply)
            assert receipt is not None and receipt.charged == 700 and receipt.deposit == 0
            # max = what was charged so far + this request's maximum
            assert server.seen[-1]["payload"]["type"] == "voucher"
            assert server.seen[-1]["payload"]["voucher"]["maxClaimableAmount"] == str(700 * (n - 1) + 1_000)
        assert _spent(spend) == 5_000  # vouchers do not count again
        (state,) = store.list()
        assert (state.balance, state.charged, state.remaining, state.signed_max) == (5_000, 3_500, 1_500, 3_800)
        assert state.channel_id == receipt.channel_id and state.url == URL
        # 3,500 + 1,000 ≤ 5,000 still fits; the next one needs a top-up
        http.get(URL)
        http.get(URL)
        assert server.seen[-1]["payload"]["type"] == "deposit"
        assert _spent(spend) == 10_000


def test_min_deposit_and_caps() -> None:
    agent = LocalSigner.generate()
    server = _server(min_deposit=8_000)
    options = ChannelOptions(store=MemoryChannelStore())
    with _client(agent, server, options) as http:
        receipt = receipt_of(http.get(URL))
        assert receipt is not None and receipt.deposit == 8_000
    # the configured deposit wins over 5 × amount, and max_deposit caps it
    server = _server()
    with _client(agent, server, ChannelOptions(deposit=3_000, max_deposit=2_500)) as http:
        receipt = receipt_of(http.get(URL))
        assert receipt is not None and receipt.deposit == 2_500
    with (
        _client(agent, _server(), ChannelOptions(max_deposit=999)) as http,
        pytest.raises(PaymentRefused) as info,
    ):
        http.get(URL)
    assert info.value.limit == "max_deposit"
    # the default cap is 5 × max_per_call; a server minimum above it is refused up front
    with (
        _client(agent, _server(min_deposit=60_000), ChannelOptions(), SpendingPolicy(max_per_call=10_000)) as http,
        pytest.raises(PaymentRefused, match="minDeposit") as info,
    ):
        http.get(URL)
    # ... and with exact offered too, the agent pays exact instead
    with _client(
        agent, _server(min_deposit=60_000, offer_exact=True), ChannelOptions(), SpendingPolicy(max_per_call=10_000)
    ) as http:
        assert _scheme_paid(http) == "exact"


def test_a_budget_too_small_for_the_usual_deposit_funds_just_the_request() -> None:
    agent, server = LocalSigner.generate(), _server()
    budget = MemoryBudgetStore()
    with _client(agent, server, ChannelOptions(), SpendingPolicy(per_day=1_500), budget) as http:
        receipt = receipt_of(http.get(URL))
        assert receipt is not None and receipt.deposit == 1_000
        with pytest.raises(PaymentRefused) as info:
            http.get(URL)  # 700 charged + 1,000 needs another 700 in: 1,700 > 1,500
        assert info.value.limit == "per_day"


def test_a_charge_above_the_maximum_is_an_error() -> None:
    agent, server = LocalSigner.generate(), _server(overcharge=True)
    with _client(agent, server, ChannelOptions()) as http, pytest.raises(ChannelResponseError, match="above"):
        http.get(URL)


def test_recovery_adopts_the_servers_state_proven_by_our_voucher() -> None:
    agent, server = LocalSigner.generate(), _server()
    with _client(agent, server, ChannelOptions()) as http:
        for _ in range(3):
            http.get(URL)
    # the agent lost its state: it believes the channel is new and signs a deposit for max 1,000
    store, budget = MemoryChannelStore(), MemoryBudgetStore()
    with _client(agent, server, ChannelOptions(store=store), SpendingPolicy(per_day=5_000), budget) as http:
        reply = http.get(URL)
        assert reply.status_code == 200
        kinds = [s["payload"]["type"] for s in server.seen[-2:]]
        assert kinds == ["deposit", "voucher"]  # refused once, resynced, paid with a plain voucher
        assert server.seen[-1]["payload"]["voucher"]["maxClaimableAmount"] == str(2_100 + 1_000)
        (state,) = store.list()
        assert (state.charged, state.balance) == (2_800, 5_000)
        # the refused deposit gave its budget back: a full day's budget is still there
        budget.reserve(5_000, SpendingPolicy(per_day=5_000).windows())


def test_a_forged_corrective_state_is_not_adopted() -> None:
    agent, server = LocalSigner.generate(), _server()
    with _client(agent, server, ChannelOptions()) as http:
        http.get(URL)
    server.forge_voucher_state = True
    store = MemoryChannelStore()
    with _client(agent, server, ChannelOptions(store=store)) as http:
        reply = http.get(URL)
    assert reply.status_code == 402  # no proof and no chain to read: give up, change nothing
    (state,) = store.list()
    assert state.charged == 0 and state.balance == 0 and receipt_of(reply) is None


def test_refund_returns_what_is_left_and_credits_the_budget(tmp_path: Path) -> None:
    agent, server = LocalSigner.generate(), _server()
    store, spend = MemoryChannelStore(), tmp_path / "spend.json"
    budget = FileBudgetStore(spend)
    with _client(agent, server, ChannelOptions(store=store), budget=budget) as http:
        http.get(URL)
        http.get(URL)
    with httpx.Client(transport=server.transport()) as http:
        result = refund_channel(agent, URL, store, budget=budget, http=http)
        assert (result.amount, result.remaining, result.transaction) == (5_000 - 1_400, 0, "0xrefund")
        inner = server.seen[-1]["payload"]
        assert inner["type"] == "refund" and "amount" not in inner
        assert inner["voucher"]["maxClaimableAmount"] == "1400"  # a zero-charge voucher
        assert _spent(spend) == 1_400  # 5,000 deposited, 3,600 back
        (state,) = store.list()
        assert (state.balance, state.charged, state.refunded, state.remaining) == (1_400, 1_400, 3_600, 0)
        with pytest.raises(RefundError, match="nothing to refund"):
            refund_channel(agent, URL, store, http=http)
    # the channel is reused: a top-up on the same cumulative total
    with _client(agent, server, ChannelOptions(store=store)) as http:
        receipt = receipt_of(http.get(URL))
        assert receipt is not None and receipt.deposit == 5_000
        assert server.seen[-1]["payload"]["voucher"]["maxClaimableAmount"] == "2400"


def test_a_partial_refund() -> None:
    agent, server = LocalSigner.generate(), _server()
    store = MemoryChannelStore()
    with _client(agent, server, ChannelOptions(store=store)) as http:
        http.get(URL)
    with httpx.Client(transport=server.transport()) as http:
        result = refund_channel(agent, URL, store, amount=1_000, http=http)
    assert (result.amount, result.remaining) == (1_000, 5_000 - 700 - 1_000)
    assert server.seen[-1]["payload"]["amount"] == "1000"


def _scheme_paid(http: httpx.Client) -> str | None:
    receipt = receipt_of(http.get(URL))
    return receipt.scheme if receipt is not None else None


def test_scheme_choice() -> None:
    agent, server = LocalSigner.generate(), _server(offer_exact=True)
    with _client(agent, server, None) as http:  # no channels: exact
        assert _scheme_paid(http) == "exact"
    with _client(agent, server, ChannelOptions()) as http:  # channels preferred when enabled
        receipt = receipt_of(http.get(URL))
        assert receipt is not None and receipt.scheme == "batch-settlement"
    with _client(agent, server, ChannelOptions(), scheme="exact") as http:
        assert _scheme_paid(http) == "exact"
    with _client(agent, _server(), None, scheme="batch-settlement") as http:
        receipt = receipt_of(http.get(URL))
        assert receipt is not None and receipt.scheme == "batch-settlement"
    with pytest.raises(ValueError, match="scheme"):
        PaymentTransport(agent, scheme="permit")


def test_recovery_from_the_chain(chain: DevChain, token: DevToken) -> None:
    chain.install_batch_settlement()
    agent = chain.new_account()
    token.mint(agent.address, 100_000)
    server = BatchServer(
        chain.network, token.address, chain.new_account().address, chain.new_account().address, chain=chain
    )
    with _client(agent, server, ChannelOptions()) as http:
        receipt = receipt_of(http.get(URL))
        assert receipt is not None and receipt.channel_id is not None
        http.get(URL)
    channel_id = bytes.fromhex(receipt.channel_id[2:])
    assert read_onchain_channel(chain.rpc_url, channel_id).balance == 5_000  # the deposit really happened
    assert token.balance_of(agent.address) == 95_000
    # a new machine: no local record, but an RPC: it finds the channel's balance on chain and
    # does not deposit again; the server's proof of 1,400 charged is then adopted
    store = MemoryChannelStore()
    with _client(agent, server, ChannelOptions(store=store, rpc_url=chain.rpc_url)) as http:
        reply = http.get(URL)
        assert reply.status_code == 200
    assert [s["payload"]["type"] for s in server.seen[-2:]] == ["voucher", "voucher"]
    (state,) = store.list()
    assert (state.balance, state.charged) == (5_000, 2_100)
    assert token.balance_of(agent.address) == 95_000
    # a forged proof with a chain to read: the chain's totalClaimed (0) is taken instead
    server.forge_voucher_state = True
    with _client(agent, server, ChannelOptions(store=MemoryChannelStore(), rpc_url=chain.rpc_url)) as http:
        assert http.get(URL).status_code == 402  # the server's claim is unproven; retried once, still refused


def test_the_async_transport_pays_by_channel() -> None:
    agent, server = LocalSigner.generate(), _server()
    store = MemoryChannelStore()

    async def run() -> list[int | None]:
        transport = AsyncPaymentTransport(
            agent, SpendingPolicy(), transport=server.transport(), channels=ChannelOptions(store=store)
        )
        charged = []
        async with httpx.AsyncClient(transport=transport) as http:
            for _ in range(3):
                receipt = receipt_of(await http.get(URL))
                charged.append(receipt.charged if receipt else None)
        return charged

    assert asyncio.run(run()) == [700, 700, 700]
    (state,) = store.list()
    assert (state.balance, state.charged) == (5_000, 2_100)


class _LosesTheFirstAnswer(httpx.BaseTransport):
    """The server gets the paid request but the connection breaks before its answer arrives."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner, self.dropped = inner, False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if "PAYMENT-SIGNATURE" in request.headers and not self.dropped:
            self.dropped = True
            raise httpx.ReadError("connection reset")
        return response


def test_an_unanswered_deposit_is_resent_never_signed_again() -> None:
    agent, server = LocalSigner.generate(), _server()
    budget = MemoryBudgetStore()
    transport = PaymentTransport(
        agent,
        SpendingPolicy(per_day=5_000),
        budget,
        transport=_LosesTheFirstAnswer(server.transport()),
        channels=ChannelOptions(),
    )
    with httpx.Client(transport=transport) as http:
        with pytest.raises(httpx.ReadError):
            http.get(URL)
        # the server took the deposit and charged; the same request again re-sends the same
        # payload, whose cumulative maximum the server has moved past: resync, then pay a voucher
        reply = http.get(URL)
    assert reply.status_code == 200
    kinds = [s["payload"]["type"] for s in server.seen]
    assert kinds == ["deposit", "deposit", "voucher"]
    assert server.seen[0] == server.seen[1]  # re-sent, not re-signed
    assert server.seen[2]["payload"]["voucher"]["maxClaimableAmount"] == "1700"
    # the deposit moved, so its budget stays spent (a second deposit would not fit in 5,000)
    with pytest.raises(PaymentRefused):
        budget.reserve(1, SpendingPolicy(per_day=5_000).windows())


def test_the_rpc_url_stays_out_of_reprs() -> None:
    assert "secret-key" not in repr(ChannelOptions(rpc_url="https://node.example/v2/secret-key"))


def test_a_disagreeing_running_total_is_not_followed_and_resyncs() -> None:
    agent, server = LocalSigner.generate(), _server(misreport_cumulative=True)
    store = MemoryChannelStore()
    with _client(agent, server, ChannelOptions(store=store)) as http:
        http.get(URL)
        (state,) = store.list()
        assert (state.charged, state.balance) == (0, 5_000)  # the deposit counts; the charge is unconfirmed
        server.misreport_cumulative = False
        assert http.get(URL).status_code == 200  # corrective 402, proven by our voucher, then paid
    (state,) = store.list()
    assert state.charged == 1_400


def test_a_refund_on_stale_state_resyncs_once() -> None:
    agent, server = LocalSigner.generate(), _server()
    store = MemoryChannelStore()
    with _client(agent, server, ChannelOptions(store=store)) as http:
        http.get(URL)
        http.get(URL)
    (state,) = store.list()
    update_channel(store, state.key, lambda current: replace(current or state, charged=700))  # lost an update
    with httpx.Client(transport=server.transport()) as http:
        result = refund_channel(agent, URL, store, http=http)
    assert result.amount == 5_000 - 1_400
    assert [s["payload"]["type"] for s in server.seen[-2:]] == ["refund", "refund"]
    assert server.seen[-1]["payload"]["voucher"]["maxClaimableAmount"] == "1400"


def test_concurrent_requests_queue_on_their_channel() -> None:
    agent, server = LocalSigner.generate(), _server()
    budget = MemoryBudgetStore()
    transport = PaymentTransport(
        agent, SpendingPolicy(), budget, transport=server.busy_transport(), channels=ChannelOptions()
    )
    statuses: list[int] = []
    with httpx.Client(transport=transport) as http:

        def call(n: int) -> None:
            # distinct requests: identical ones would share one payment (see PaymentPending)
            statuses.append(http.get(URL, params={"n": n}).status_code)

        threads = [threading.Thread(target=call, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert statuses == [200] * 6  # none refused as busy
    kinds = [s["payload"]["type"] for s in server.seen]
    assert kinds == ["deposit"] + ["voucher"] * 5  # one deposit, not one per thread


def test_concurrent_async_requests_queue_on_their_channel() -> None:
    agent, server = LocalSigner.generate(), _server()

    async def run() -> list[int]:
        transport = AsyncPaymentTransport(
            agent, SpendingPolicy(), transport=server.async_busy_transport(), channels=ChannelOptions()
        )
        async with httpx.AsyncClient(transport=transport) as http:
            replies = await asyncio.gather(*(http.get(URL, params={"n": n}) for n in range(5)))
        return [r.status_code for r in replies]

    assert asyncio.run(run()) == [200] * 5
    assert [s["payload"]["type"] for s in server.seen] == ["deposit"] + ["voucher"] * 4
