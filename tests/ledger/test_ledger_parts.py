"""The ledger's pure parts: times, USD rendering, paging, summing, and pairing transfers."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from payrouter.chain import ChainClient, ChainError
from payrouter.journal import MemoryJournal, PaymentRecord, State
from payrouter.ledger import Transfer, compare, fetch_records, parse_time, summarize, transfers_to, usd
from payrouter.sandbox.serving import serve_in_thread
from tests.journal.records import sample_record

from .seed import BASE_MS

A, B = "0x" + "aa" * 20, "0x" + "bb" * 20


def _record(n: int, created_at: int, **changes: object) -> PaymentRecord:
    base = sample_record(A, f"0x{n:064x}", state=State.SETTLED, owner="o", amount=100, model="m", created_at=created_at)
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("2025-03-01T10:00:00Z", BASE_MS),
        ("2025-03-01T12:00:00+02:00", BASE_MS),
        ("2025-03-01 10:00:00", BASE_MS),  # no offset: UTC
        ("2025-03-01", BASE_MS - 10 * 3_600_000),
        ("1740823200", BASE_MS),
        ("1740823200.25", BASE_MS + 250),
        ("1740823200000", BASE_MS),  # 13 digits: milliseconds
    ],
)
def test_parse_time(text: str, ms: int) -> None:
    assert parse_time(text) == ms


@pytest.mark.parametrize("text", ["yesterday", "", "-5", "2025-13-01", "1e9"])
def test_parse_time_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="not a time"):
        parse_time(text)


def test_usd_is_exact() -> None:
    assert usd(1_234_500, 6) == "1.234500"
    assert usd(-5, 6) == "-0.000005"
    assert usd(0, 6) == "0.000000"
    assert usd(7, 0) == "7"
    assert usd(10**40 + 1, 18) == "10000000000000000000000.000000000000000001"


async def test_fetch_records_pages_through_a_crowded_millisecond() -> None:
    journal = MemoryJournal()
    times = [BASE_MS, BASE_MS + 1] + [BASE_MS + 2] * 5 + [BASE_MS + 3]
    for n, t in enumerate(times):
        await journal.open(_record(n, t))
    got = await fetch_records(journal, page=2)
    assert [(r.created_at, r.nonce) for r in got] == sorted((t, f"0x{n:064x}") for n, t in enumerate(times))
    assert [r.created_at for r in await fetch_records(journal, BASE_MS + 2, BASE_MS + 2, page=2)] == [BASE_MS + 2] * 5


def test_summary_counts_cost_of_every_record_and_revenue_of_settled_ones() -> None:
    records = [
        _record(1, BASE_MS, charged=100, upstream_cost=60),
        _record(2, BASE_MS, state=State.OWED, upstream_cost=80, model="n"),
        _record(3, BASE_MS, state=State.RELEASED, upstream_cost=0, payer=B),
    ]
    total = summarize(records)["total"]
    assert (total.records, total.settled, total.revenue, total.upstream_cost, total.margin) == (3, 1, 100, 140, -40)
    assert {k: v.margin for k, v in summarize(records, "model").items()} == {"m": 40, "n": -80}
    assert list(summarize(records, "payer")) == [A, B]


def test_compare_pairs_transfers_within_a_batched_transaction() -> None:
    tx = "0x" + "01" * 32
    transfers = [Transfer(tx, 0, 5, A, 100), Transfer(tx, 1, 5, B, 200), Transfer(tx, 2, 5, B, 300)]
    records = [
        _record(1, BASE_MS, tx=tx, charged=100),
        _record(2, BASE_MS, tx=tx, payer=B, charged=300),
        _record(3, BASE_MS, tx=tx, payer=B, charged=250),  # B's other transfer moved 200
        _record(4, BASE_MS, tx=tx, charged=100),  # a second record for A's one transfer
    ]
    matched, diffs = compare(transfers, records)
    assert matched == 2
    assert [(d.kind, d.record, d.chain_amount, d.journal_amount) for d in diffs] == [
        ("not_on_chain", records[3].id, None, 100),
        ("amount_mismatch", records[2].id, 200, 250),
    ]


async def test_transfers_to_halves_a_range_the_node_refuses() -> None:
    asked: list[tuple[int, int]] = []
    log = {
        "transactionHash": "0x" + "AB" * 32,
        "logIndex": "0x3",
        "blockNumber": "0x7",
        "topics": ["0x0", "0x" + "0" * 24 + B[2:], "0x0"],
        "data": "0x" + f"{1234:064x}",
    }

    async def node(request: Request) -> JSONResponse:
        body = json.loads(await request.body())
        start, end = (int(body["params"][0][k], 16) for k in ("fromBlock", "toBlock"))
        asked.append((start, end))
        if end - start + 1 > 3:
            return JSONResponse({"jsonrpc": "2.0", "id": body["id"], "error": {"message": "range too large"}})
        logs = [log, {**log, "removed": True}] if start <= 7 <= end else []
        return JSONResponse({"jsonrpc": "2.0", "id": body["id"], "result": logs})

    async def down(request: Request) -> JSONResponse:
        body = json.loads(await request.body())
        return JSONResponse({"jsonrpc": "2.0", "id": body["id"], "error": {"message": "no"}})

    # a node over real HTTP that refuses ranges over 3 blocks, and one that refuses everything
    app = Starlette(routes=[Route("/", node, methods=["POST"]), Route("/down", down, methods=["POST"])])
    with serve_in_thread(app) as url:
        chain = ChainClient(url + "/")
        try:
            got = await transfers_to(chain, "0x" + "33" * 20, "0x" + "22" * 20, 0, 9, chunk=10)
            assert got == [Transfer("0x" + "ab" * 32, 3, 7, B, 1234)]
            assert asked == [(0, 9), (0, 4), (0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
        finally:
            await chain.close()
        broken = ChainClient(url + "/down")
        try:
            with pytest.raises(ChainError):
                await transfers_to(broken, "0x" + "33" * 20, "0x" + "22" * 20, 0, 3, chunk=4)
        finally:
            await broken.close()


def test_channel_money_movements_are_not_calls() -> None:
    from payrouter.channels.records import claim_record, settle_record

    voucher = replace(
        sample_record(state=State.SETTLED, charged=700), id="batch:0x" + "ab" * 32 + ":0", scheme="batch-settlement"
    )
    claim = claim_record(
        "0x" + "01" * 32, {"0x" + "ab" * 32: (700, 700)}, network="eip155:1", asset=A, pay_to=B, state=State.SETTLED
    )
    settle = settle_record("0x" + "02" * 32, 700, network="eip155:1", asset=A, pay_to=B, state=State.SETTLED)
    total = summarize([voucher, claim, settle])["total"]
    assert (total.records, total.settled, total.revenue) == (1, 1, 700)
