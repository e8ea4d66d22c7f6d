"""``payrouter ledger`` run as a user runs it: a subprocess on a config file, against a journal
in the real Redis and real transfers on the dev chain."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.asyncio import Redis

from payrouter.devchain import DevChain, DevToken
from payrouter.journal import PaymentRecord, RedisJournal, State
from tests.redis_keys import delete_namespace, run_token
from tests.service_config import GAS_KEY_ENV, example_table, write_config
from wallets import LocalSigner

from .seed import BASE_MS, DAY_MS, MINUTE_MS, Paid, authorize, record, submit, write

pytestmark = pytest.mark.chain

REDIS_URL = "redis://127.0.0.1:6379/0"
CLI = Path(sys.executable).parent / "payrouter"
FAKE_TX = "0x" + "fa" * 32
OTHER_TX = "0x" + "fb" * 32


@dataclass
class Seeded:
    folder: Path
    config: Path
    env: dict[str, str]
    pay_to: str
    a: LocalSigner
    b: LocalSigner
    paid: dict[str, Paid]
    records: dict[str, PaymentRecord]
    mint_block: int
    results: dict[str, subprocess.CompletedProcess[str]]


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), "ledger", *args], capture_output=True, text=True, timeout=60, env=env)


async def _seed(
    namespace: str, chain: DevChain, token: DevToken, paid: dict[str, Paid], other: str
) -> dict[str, PaymentRecord]:
    journal = RedisJournal(Redis.from_url(REDIS_URL), namespace)
    t = BASE_MS
    try:

        def usage(model: str, cost: int, tokens: tuple[int, int]) -> dict[str, object]:
            return {
                "delivered": "complete",
                "answered_by": model,
                "upstream_cost": cost,
                "input_tokens": tokens[0],
                "output_tokens": tokens[1],
            }

        r: dict[str, PaymentRecord] = {}
        r["r1"] = await write(
            journal,
            record(chain, token, paid["t1"], "gpt-4o", t),
            State.SETTLED,
            tx=paid["t1"].tx,
            charged=10_000,
            **usage("gpt-4o", 6_000, (1200, 350)),
        )
        r["r2"] = await write(
            journal,
            record(chain, token, paid["t2"], "gpt-4o-mini", t + MINUTE_MS),
            State.SETTLED,
            tx=paid["t2"].tx,
            charged=25_000,
            **usage("gpt-4o-mini", 20_000, (900, 100)),
        )
        # signed for 7500, but 7000 moved on chain (an amount mismatch)
        mismatch = record(chain, token, paid["t3"], "gpt-4o", t + 2 * MINUTE_MS)
        mismatch.amount = 7_500
        r["r3"] = await write(
            journal, mismatch, State.SETTLED, tx=paid["t3"].tx, charged=7_500, **usage("gpt-4o", 5_000, (10, 20))
        )
        # t4 is on chain and has no record at all; t5 is on chain but its record is still pending
        r["r5"] = await write(
            journal,
            record(chain, token, paid["t5"], "gpt-4o-mini", t + 3 * MINUTE_MS),
            State.PENDING,
            tx=paid["t5"].tx,
            reason="settlement_pending",
            **usage("gpt-4o-mini", 1_000, (5, 5)),
        )
        # settled in the journal with a transaction the chain never saw
        r["r6"] = await write(
            journal,
            record(chain, token, paid["f6"], "gpt-4o", t + 4 * MINUTE_MS),
            State.SETTLED,
            tx=FAKE_TX,
            charged=12_000,
            **usage("gpt-4o", 8_000, (1, 1)),
        )
        r["r7"] = await write(
            journal,
            record(chain, token, paid["f7"], "gpt-4o", t + 5 * MINUTE_MS),
            State.RELEASED,
            reason="upstream_failed",
        )
        # a stream that was delivered and then could not be collected: a loss
        r["r8"] = await write(
            journal,
            record(chain, token, paid["f8"], "gpt-4o-mini", t + 6 * MINUTE_MS, stream=True),
            State.OWED,
            reason="insufficient_funds",
            **usage("gpt-4o-mini", 40_000, (50, 4000)),
        )
        # paid to another address (the treasury before): not audited against this pay_to
        r["r9"] = await write(
            journal,
            record(chain, token, paid["f9"], "gpt-4o", t + DAY_MS),
            State.SETTLED,
            tx=OTHER_TX,
            charged=1_000,
            **usage("gpt-4o", 500, (3, 3)),
        )
        assert r["r9"].pay_to.lower() == other.lower()
        return r
    finally:
        await journal.close()


@pytest.fixture(scope="module")
def seeded(chain: DevChain, token: DevToken, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    namespace = f"payrouter-test-ledger-{run_token()}"
    folder = tmp_path_factory.mktemp("ledger")
    pay_to, other = LocalSigner.generate().address, LocalSigner.generate().address
    relayer = chain.new_account()
    a, b = LocalSigner.generate(), LocalSigner.generate()
    token.mint(a.address, 1_000_000)
    token.mint(b.address, 1_000_000)
    paid = {
        "t1": submit(token, relayer, authorize(token, a, pay_to, 10_000)),
        "t2": submit(token, relayer, authorize(token, b, pay_to, 25_000)),
        "t3": submit(token, relayer, authorize(token, a, pay_to, 7_000)),
        "t4": submit(token, relayer, authorize(token, b, pay_to, 3_000)),
        "t5": submit(token, relayer, authorize(token, a, pay_to, 4_000)),
        # signed, never submitted
        "f6": authorize(token, b, pay_to, 12_000),
        "f7": authorize(token, a, pay_to, 9_000),
        "f8": authorize(token, b, pay_to, 3_300),
        "f9": authorize(token, a, other, 1_000),
    }
    mint_block = int(token.mint(pay_to, 50_000)["blockNumber"])  # money from nobody's payment
    config = write_config(
        folder, example_table(chain.network, token.address, pay_to), REDIS_URL, namespace, chain.rpc_url
    )
    env = {**os.environ, GAS_KEY_ENV: chain.new_account().unsafe_export_private_key()}
    try:
        records = asyncio.run(_seed(namespace, chain, token, paid, other))
        down = folder / "down.toml"
        down.write_text(config.read_text().replace(REDIS_URL, "redis://:s3cret-pw@127.0.0.1:1/0"))
        c = str(config)
        commands = {
            "list": ["list", "--config", c, "--limit", "3"],
            "list_json": ["list", "--config", c, "--json", "--state", "settled", "--payer", a.address.lower()],
            "csv": ["export", "--config", c, "--format", "csv"],
            "jsonl": [
                "export",
                "--config",
                c,
                "--format",
                "jsonl",
                "--with-payment",
                "--out",
                str(folder / "x.jsonl"),
                "--since",
                "2025-03-01T10:01:00Z",
                "--until",
                str((BASE_MS + 4 * MINUTE_MS) // 1000),
            ],
            "by_model": ["summary", "--config", c, "--by", "model", "--json"],
            "by_day": ["summary", "--config", c, "--by", "day"],
            "audit": ["audit", "--config", c],
            "audit_from": ["audit", "--config", c, "--json", "--from-block", str(paid["t3"].block)],
            "bad_since": ["list", "--config", c, "--since", "yesterday"],
            "redis_down": ["summary", "--config", str(down)],
            "no_config": ["audit", "--config", str(folder / "missing.toml")],
        }
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = {name: pool.submit(run, args, env) for name, args in commands.items()}
            results = {name: f.result() for name, f in futures.items()}
        yield Seeded(folder, config, env, pay_to, a, b, paid, records, mint_block, results)
    finally:
        delete_namespace(REDIS_URL, namespace)


def _cells(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


def _short(value: str) -> str:
    return f"{value[:8]}…{value[-4:]}"


def test_list_shows_the_newest_records_as_a_table(seeded: Seeded) -> None:
    done = seeded.results["list"]
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert _cells(lines[0]) == ["time (UTC)", "state", "payer", "model", "amount $", "charged $", "tx"]
    assert [_cells(line) for line in lines[1:]] == [
        ["2025-03-01 10:05:00", "released", _short(seeded.a.address), "gpt-4o", "0.009000", "0.000000", "-"],
        ["2025-03-01 10:06:00", "owed", _short(seeded.b.address), "gpt-4o-mini", "0.003300", "0.000000", "-"],
        [
            "2025-03-02 10:00:00",
            "settled",
            _short(seeded.a.address),
            "gpt-4o",
            "0.001000",
            "0.001000",
            _short(OTHER_TX),
        ],
    ]


def test_list_json_filters_by_state_and_payer(seeded: Seeded) -> None:
    done = seeded.results["list_json"]
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["id"] for r in rows] == [seeded.records[k].id for k in ("r1", "r3", "r9")]
    assert [(r["amount"], r["charged"], r["tx"]) for r in rows] == [
        ("10000", "10000", seeded.paid["t1"].tx),
        ("7500", "7500", seeded.paid["t3"].tx),
        ("1000", "1000", OTHER_TX),
    ]
    assert all("payment" not in r for r in rows)


COLUMNS = [
    "id", "scheme", "state", "owner", "payer", "pay_to", "asset", "network", "amount", "nonce", "valid_before",
    "x402_version", "fingerprint", "request", "path", "stream", "route", "model", "attempts", "reserves", "answered_by",
    "upstream_cost", "input_tokens", "output_tokens", "charged", "delivered", "tx", "reason", "created_at",
    "updated_at", "settled_at",
]  # fmt: skip


def test_export_csv_has_every_field_but_the_payment_in_a_fixed_order(seeded: Seeded) -> None:
    done = seeded.results["csv"]
    assert done.returncode == 0, done.stderr
    rows = list(csv.reader(io.StringIO(done.stdout)))
    assert rows[0] == COLUMNS
    r = seeded.records
    assert [row[0] for row in rows[1:]] == [r[k].id for k in ("r1", "r2", "r3", "r5", "r6", "r7", "r8", "r9")]
    r1, t1 = r["r1"], seeded.paid["t1"]
    assert rows[1] == [
        r1.id, "exact", "settled", r1.owner, seeded.a.address, seeded.pay_to, r1.asset, r1.network, "10000",
        "0x" + t1.auth.nonce.hex(), str(t1.auth.valid_before), "2", r1.fingerprint, r1.request,
        "/v1/chat/completions", "0", "{}", "gpt-4o", "1", "0", "gpt-4o", "6000", "1200", "350", "10000", "complete",
        t1.tx, "", str(BASE_MS), str(BASE_MS + 3000), str(BASE_MS + 3000),
    ]  # fmt: skip
    r8 = r["r8"]
    assert rows[7] == [
        r8.id, "exact", "owed", r8.owner, seeded.b.address, seeded.pay_to, r8.asset, r8.network, "3300",
        r8.nonce, str(r8.valid_before), "2", r8.fingerprint, r8.request, "/v1/chat/completions", "1", "{}",
        "gpt-4o-mini", "1", "0", "gpt-4o-mini", "40000", "50", "4000", "0", "complete", "", "insufficient_funds",
        str(BASE_MS + 6 * MINUTE_MS), str(BASE_MS + 6 * MINUTE_MS + 3000), "0",
    ]  # fmt: skip
    # the signed authorization is left out unless asked for
    assert seeded.paid["t1"].signature.hex() not in done.stdout


def test_export_jsonl_by_time_range_with_the_payment(seeded: Seeded) -> None:
    done = seeded.results["jsonl"]
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert "exported 3 records" in done.stderr
    rows = [json.loads(line) for line in (seeded.folder / "x.jsonl").read_text().splitlines()]
    # --since inclusive, --until exclusive: r2 (10:01), r3 (10:02), r5 (10:03); r6 (10:04) is out
    assert [r["id"] for r in rows] == [seeded.records[k].id for k in ("r2", "r3", "r5")]
    assert list(rows[0]) == COLUMNS[:12] + ["payment"] + COLUMNS[12:]
    r2 = rows[0]
    assert (r2["amount"], r2["charged"], r2["upstream_cost"], r2["input_tokens"], r2["stream"]) == (
        "25000",
        "25000",
        "20000",
        900,
        False,
    )
    assert json.loads(r2["payment"])["payload"]["signature"] == "0x" + seeded.paid["t2"].signature.hex()


def _group(name: str, records: int, settled: int, revenue: int, cost: int) -> dict[str, object]:
    def usd(v: int) -> str:
        return f"{'-' if v < 0 else ''}{abs(v) // 10**6}.{abs(v) % 10**6:06d}"

    margin = revenue - cost
    return {
        "group": name, "records": records, "settled": settled,
        "revenue": str(revenue), "revenue_usd": usd(revenue),
        "upstream_cost": str(cost), "upstream_cost_usd": usd(cost),
        "margin": str(margin), "margin_usd": usd(margin),
    }  # fmt: skip


def test_summary_by_model(seeded: Seeded, token: DevToken) -> None:
    done = seeded.results["by_model"]
    assert done.returncode == 0, done.stderr
    # gpt-4o:      r1 r3 r6 r7 r9; settled r1 r3 r6 r9: 10000 + 7500 + 12000 + 1000 = 30500;
    #              cost 6000 + 5000 + 8000 + 0 + 500 = 19500
    # gpt-4o-mini: r2 r5 r8; settled r2: 25000; cost 20000 + 1000 + 40000 (the owed stream) = 61000
    assert json.loads(done.stdout) == {
        "asset": token.address,
        "decimals": 6,
        "by": "model",
        "groups": [_group("gpt-4o", 5, 4, 30_500, 19_500), _group("gpt-4o-mini", 3, 1, 25_000, 61_000)],
        "total": _group("total", 8, 5, 55_500, 80_500),
        "other_asset_records": 0,
    }
    assert _group("total", 8, 5, 55_500, 80_500)["margin_usd"] == "-0.025000"


def test_summary_by_day_as_a_table(seeded: Seeded) -> None:
    done = seeded.results["by_day"]
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert _cells(lines[0]) == [
        "day",
        "records",
        "settled",
        "revenue $ (units)",
        "upstream cost $ (units)",
        "margin $ (units)",
    ]
    assert [_cells(line) for line in lines[1:]] == [
        ["2025-03-01", "7", "4", "0.054500 (54500)", "0.080000 (80000)", "-0.025500 (-25500)"],
        ["2025-03-02", "1", "1", "0.001000 (1000)", "0.000500 (500)", "0.000500 (500)"],
        ["total", "8", "5", "0.055500 (55500)", "0.080500 (80500)", "-0.025000 (-25000)"],
    ]


def test_audit_lists_exactly_the_unjournaled_and_the_fake(seeded: Seeded) -> None:
    done = seeded.results["audit"]
    assert done.returncode == 1, done.stderr
    p, a, b = seeded.paid, seeded.a.address.lower(), seeded.b.address.lower()
    lines = done.stdout.splitlines()
    assert lines[1:] == [
        # t1..t5 and the mint: 10000 + 25000 + 7000 + 3000 + 4000 + 50000
        "chain:   6 transfers, total 0.099000 (99000)",
        # r1 r2 r3 r6 (r9 went to another address)
        "journal: 4 settled records, total 0.054500 (54500)",
        "matched: 2",
        "left out: 1 settled records of another asset or pay_to",
        "differences: 5",
        f"  on chain, not settled in the journal: tx {p['t4'].tx} block {p['t4'].block} log 1 payer {b} "
        f"record {p['t4'].record_id} chain 0.003000 (3000) journal -: no journal record for this authorization",
        f"  on chain, not settled in the journal: tx {p['t5'].tx} block {p['t5'].block} log 1 payer {a} "
        f"record {p['t5'].record_id} chain 0.004000 (4000) journal -: the journal record is pending",
        f"  on chain, not settled in the journal: tx {_mint_tx(seeded)} block {seeded.mint_block} log 0 "
        f"payer 0x{'00' * 20} chain 0.050000 (50000) journal -: not an EIP-3009 authorization from this payer: a plain transfer",
        f"  settled in the journal, not on chain: tx {FAKE_TX} payer {b} record {seeded.records['r6'].id} "
        "chain - journal 0.012000 (12000): no such transaction on chain",
        f"  amount differs: tx {p['t3'].tx} block {p['t3'].block} log 1 payer {a} record {seeded.records['r3'].id} "
        "chain 0.007000 (7000) journal 0.007500 (7500): the transfer moved another amount than the record charged",
    ]


def _mint_tx(seeded: Seeded) -> str:
    audit = json.loads(seeded.results["audit_from"].stdout)
    return str(next(d["tx"] for d in audit["differences"] if d["block"] == seeded.mint_block))


def test_audit_from_a_block_leaves_earlier_settlements_out(seeded: Seeded) -> None:
    done = seeded.results["audit_from"]
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    p, a, b = seeded.paid, seeded.a.address.lower(), seeded.b.address.lower()
    r = seeded.records
    assert report["from_block"] == p["t3"].block and report["to_block"] >= seeded.mint_block
    assert {k: report[k] for k in ("chain", "journal", "matched", "out_of_range", "other", "equal")} == {
        "chain": {"count": 4, "total": str(7_000 + 3_000 + 4_000 + 50_000)},
        "journal": {"count": 2, "total": str(7_500 + 12_000)},  # r1 and r2 were mined before the range
        "matched": 0,
        "out_of_range": 2,
        "other": 1,
        "equal": False,
    }
    kinds = [
        (d["kind"], d["tx"], d["record"], d["state"], d["chain_amount"], d["journal_amount"])
        for d in report["differences"]
    ]
    assert kinds == [
        ("not_in_journal", p["t4"].tx, p["t4"].record_id, "", "3000", None),
        ("not_in_journal", p["t5"].tx, p["t5"].record_id, "pending", "4000", None),
        ("not_in_journal", _mint_tx(seeded), "", "", "50000", None),
        ("not_on_chain", FAKE_TX, r["r6"].id, "settled", None, "12000"),
        ("amount_mismatch", p["t3"].tx, r["r3"].id, "settled", "7000", "7500"),
    ]
    assert [d["payer"] for d in report["differences"]] == [b, a, "0x" + "00" * 20, b, a]


def test_errors_are_one_line_and_exit_2(seeded: Seeded) -> None:
    results = seeded.results
    for name in ("bad_since", "redis_down", "no_config"):
        done = results[name]
        assert done.returncode == 2, (name, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr and done.stdout == "", (name, done.stderr)
    assert "argument --since: not a time: 'yesterday'" in results["bad_since"].stderr
    assert results["redis_down"].stderr.startswith("error: cannot reach the journal's Redis: ")
    assert results["no_config"].stderr.startswith("error: cannot read config ")
    gas_key = seeded.env[GAS_KEY_ENV]
    for done in results.values():
        assert gas_key[2:] not in done.stdout + done.stderr
        assert "s3cret-pw" not in done.stdout + done.stderr
