"""``payrouter ledger``: list, export, summarize, audit and reconcile the payment journal.

Every command reads the service's own config file (its Redis, namespace, price table and
chain). Errors (a bad config, Redis or the node unreachable, a bad time) are one line on
stderr and exit code 2; ``audit`` exits 1 when the chain and the journal differ, and
``reconcile`` when its pass was skipped or some records could not be decided.

``audit`` also accounts for batch-settlement channel money (voucher records, the channel
store and the contract; `payrouter.ledger.channel_audit`) whenever there is any.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any, TextIO

from payrouter.chain import ChainClient, ChainError
from payrouter.channels.contract import BatchSettlementContract
from payrouter.channels.store import open_channel_store
from payrouter.journal import Journal, PaymentRecord, State
from payrouter.journal.open import open_journal
from payrouter.ledger import (
    AuditReport,
    Totals,
    audit,
    fetch_records,
    parse_time,
    summarize,
    usd,
    write_csv,
    write_jsonl,
)
from payrouter.ledger.export import record_json
from payrouter.ledger.summary import GROUPINGS
from payrouter.settings import ConfigError, Settings, load_settings
from payrouter.store import StoreError
from pricing import PricingError
from wallets import WalletError

__all__ = ["add_ledger_commands"]

STATES = (
    State.CLAIMED,
    State.SERVING,
    State.SETTLING,
    State.SETTLED,
    State.PENDING,
    State.OWED,
    State.RELEASED,
    State.UNPAID,
)


def _out(text: str = "", sink: TextIO | None = None) -> None:
    (sink or sys.stdout).write(text + "\n")


def _time_arg(text: str) -> int:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config)
    if not settings.redis_url:
        raise ConfigError(f"{args.config} has no redis_url: the journal lives in the service's memory, not in Redis")
    return settings


def _bounds(args: argparse.Namespace) -> tuple[int, int | None]:
    # --until is exclusive; the journal's end bound is inclusive
    start = args.since if args.since is not None else 0
    end = args.until - 1 if args.until is not None else None
    return start, end


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _short(value: str, keep: int = 6) -> str:
    return value if len(value) <= 2 * keep + 3 else f"{value[: keep + 2]}…{value[-keep + 2 :]}"


def _table(headers: Sequence[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    lines = []
    for row in [list(headers), *rows]:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return lines


async def _with_journal(settings: Settings, work: Callable[[Journal], Awaitable[int]]) -> int:
    assert settings.redis_url is not None
    journal = open_journal(settings.redis_url, settings.namespace)
    try:
        return await work(journal)
    finally:
        await journal.close()


def _run(command: Callable[[argparse.Namespace], Coroutine[Any, Any, int]]) -> Callable[[argparse.Namespace], int]:
    """The command as the CLI calls it: one event loop, and every expected failure as exit code 2."""

    def run(args: argparse.Namespace) -> int:
        try:
            return asyncio.run(command(args))
        except (ConfigError, PricingError, WalletError) as exc:
            _out(f"error: {exc}", sys.stderr)
        except StoreError as exc:
            _out(f"error: cannot reach the journal's Redis: {exc}", sys.stderr)
        except ChainError as exc:
            _out(f"error: cannot read the chain: {exc}", sys.stderr)
        except OSError as exc:
            _out(f"error: {exc}", sys.stderr)
        return 2

    return run


# list


async def _list(args: argparse.Namespace) -> int:
    settings = _settings(args)
    start, end = _bounds(args)

    async def work(journal: Journal) -> int:
        records = await fetch_records(journal, start, end)
        if args.state:
            records = [r for r in records if r.state == args.state]
        if args.payer:
            records = [r for r in records if r.payer.lower() == args.payer.lower()]
        records = records[-args.limit :] if args.limit > 0 else []
        if args.json:
            for record in records:
                _out(json.dumps(record_json(record), separators=(",", ":")))
            return 0
        asset = settings.price_table.asset

        def money(record: PaymentRecord, atomic: int) -> str:
            if record.asset.lower() != asset.address.lower():
                return f"{atomic} units"
            return usd(atomic, asset.decimals)

        rows = [
            [
                _when(r.created_at),
                r.state,
                _short(r.payer),
                r.model,
                money(r, r.amount),
                money(r, r.charged),
                _short(r.tx) if r.tx else "-",
            ]
            for r in records
        ]
        headers = ["time (UTC)", "state", "payer", "model", "amount $", "charged $", "tx"]
        for line in _table(headers, rows, right={4, 5}):
            _out(line)
        return 0

    return await _with_journal(settings, work)


# export


async def _export(args: argparse.Namespace) -> int:
    settings = _settings(args)
    start, end = _bounds(args)

    async def work(journal: Journal) -> int:
        records = await fetch_records(journal, start, end)
        write = write_csv if args.format == "csv" else write_jsonl
        if args.out is None:
            write(records, sys.stdout, args.with_payment)
            return 0
        with open(args.out, "w", encoding="utf-8", newline="") as sink:
            count = write(records, sink, args.with_payment)
        _out(f"exported {count} records to {args.out}", sys.stderr)
        return 0

    return await _with_journal(settings, work)


# summary


def _totals_json(name: str, totals: Totals, decimals: int) -> dict[str, Any]:
    out: dict[str, Any] = {"group": name, "records": totals.records, "settled": totals.settled}
    for key, value in (
        ("revenue", totals.revenue),
        ("upstream_cost", totals.upstream_cost),
        ("margin", totals.margin),
    ):
        out[key] = str(value)
        out[key + "_usd"] = usd(value, decimals)
    return out


async def _summary(args: argparse.Namespace) -> int:
    settings = _settings(args)
    start, end = _bounds(args)
    asset = settings.price_table.asset

    async def work(journal: Journal) -> int:
        records = await fetch_records(journal, start, end)
        mine = [r for r in records if r.asset.lower() == asset.address.lower()]
        skipped = len(records) - len(mine)
        groups = summarize(mine, args.by)
        total = summarize(mine).get("total", Totals())
        if args.json:
            doc = {
                "asset": asset.address,
                "decimals": asset.decimals,
                "by": args.by,
                "groups": [_totals_json(name, t, asset.decimals) for name, t in groups.items()] if args.by else [],
                "total": _totals_json("total", total, asset.decimals),
                "other_asset_records": skipped,
            }
            _out(json.dumps(doc))
            return 0
        named = [*groups.items(), ("total", total)] if args.by else [("total", total)]
        rows = [
            [
                name,
                str(t.records),
                str(t.settled),
                f"{usd(t.revenue, asset.decimals)} ({t.revenue})",
                f"{usd(t.upstream_cost, asset.decimals)} ({t.upstream_cost})",
                f"{usd(t.margin, asset.decimals)} ({t.margin})",
            ]
            for name, t in named
        ]
        headers = [
            args.by or "",
            "records",
            "settled",
            "revenue $ (units)",
            "upstream cost $ (units)",
            "margin $ (units)",
        ]
        for line in _table(headers, rows, right={1, 2, 3, 4, 5}):
            _out(line)
        if skipped:
            _out(f"left out {skipped} records in another asset than {asset.address}", sys.stderr)
        return 0

    return await _with_journal(settings, work)


# audit


def _print_audit(report: AuditReport, settings: Settings) -> None:
    table = settings.price_table
    decimals = table.asset.decimals

    def money(atomic: int | None) -> str:
        return "-" if atomic is None else f"{usd(atomic, decimals)} ({atomic})"

    _out(f"audit of {table.asset.address} transfers to {table.pay_to}, blocks {report.from_block}..{report.to_block}")
    _out(f"chain:   {report.chain_count} transfers, total {money(report.chain_total)}")
    _out(f"journal: {report.journal_count} settled records, total {money(report.journal_total)}")
    _out(f"matched: {report.matched}")
    if report.out_of_range:
        _out(f"left out: {report.out_of_range} settled records mined outside these blocks")
    if report.other:
        _out(f"left out: {report.other} settled records of another asset or pay_to")
    _out(f"differences: {len(report.differences)}")
    titles = {
        "not_in_journal": "on chain, not settled in the journal",
        "not_on_chain": "settled in the journal, not on chain",
        "amount_mismatch": "amount differs",
    }
    for d in report.differences:
        where = f" block {d.block} log {d.log_index}" if d.block is not None else ""
        record = f" record {d.record}" if d.record else ""
        _out(
            f"  {titles[d.kind]}: tx {d.tx or '-'}{where} payer {d.payer}{record} "
            f"chain {money(d.chain_amount)} journal {money(d.journal_amount)}" + (f": {d.note}" if d.note else "")
        )
    if report.channels is not None and (report.channels.channels or not report.channels.equal):
        _print_channel_audit(report, money)


def _print_channel_audit(report: AuditReport, money: Callable[[int | None], str]) -> None:
    channels = report.channels
    assert channels is not None
    _out(
        f"channels: {len(channels.channels)}, charged {money(channels.charged)}, unclaimed {money(channels.unclaimed)}"
    )
    _out(f"  claims:  journal {money(channels.claims_journal)}, chain {money(channels.claimed_chain)}")
    _out(f"  settles: journal {money(channels.settles_journal)}, chain {money(channels.settled_chain)}")
    if report.sweeps:
        _out(f"  settle transfers to pay_to in these blocks: {report.sweeps}, total {money(report.sweeps_total)}")
    if channels.pending:
        _out(f"  in doubt: {', '.join(channels.pending)}")
    for row in channels.channels:
        if row.unclaimed:
            _out(f"  unclaimed: channel {row.channel_id} {money(row.unclaimed)}")
    _out(f"channel differences: {len(channels.differences)}")
    titles = {
        "journal_vs_store": "voucher records vs the store's charged",
        "journal_vs_chain": "voucher records vs claimed on chain (channel gone from the store)",
        "balance_vs_chain": "deposit minus refund and withdrawal records vs the channel's balance on chain",
        "claimed_above_charged": "the store's charged vs claimed on chain",
        "charged_above_balance": "the store's charged vs the channel's balance on chain (lost)",
        "claims_vs_chain": "claim records vs the receiver's claimed on chain",
        "settles_vs_chain": "settle records vs the receiver's settled on chain",
    }
    for d in channels.differences:
        where = f" channel {d.channel}" if d.channel else ""
        _out(f"  {titles[d.kind]}:{where} {money(d.expected)} vs {money(d.actual)}" + (f": {d.note}" if d.note else ""))


async def _audit(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if not settings.rpc_url:
        raise ConfigError(f"{args.config} has no rpc_url: the audit reads the chain")
    table = settings.price_table
    rpc_url = settings.rpc_url

    async def work(journal: Journal) -> int:
        assert settings.redis_url is not None
        chain = ChainClient(rpc_url)
        # the gate's channel store: same Redis and namespace as the journal
        channels = open_channel_store(settings.redis_url, settings.namespace)
        try:
            chain_id = await chain.chain_id()
            if chain_id != table.chain_id:
                raise ConfigError(f"rpc_url serves chain {chain_id}, the price table wants {table.network}")
            contract = BatchSettlementContract(chain, None, chain_id)
            report = await audit(
                journal, chain, table.asset.address, table.pay_to, args.from_block, (channels, contract)
            )
        finally:
            await chain.close()
            await channels.close()
        if args.json:
            _out(json.dumps(report.to_json()))
        else:
            _print_audit(report, settings)
        return 0 if report.equal else 1

    return await _with_journal(settings, work)


# reconcile


async def _reconcile(args: argparse.Namespace) -> int:
    from payrouter.reconciler import Reconciler, Resolver
    from payrouter.settlement_backend import open_settlement_backend
    from payrouter.store import RedisStore

    settings = _settings(args)
    assert settings.redis_url is not None
    if not settings.rpc_url:
        raise ConfigError(f"{args.config} has no rpc_url: reconciling reads the chain")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    async with AsyncExitStack() as stack:
        store = RedisStore(settings.redis_url, settings.namespace)
        stack.push_async_callback(store.close)
        await store.ping()
        journal = open_journal(settings.redis_url, settings.namespace)
        stack.push_async_callback(journal.close)
        backend = await open_settlement_backend(settings, store, stack)
        report = await Reconciler(Resolver(journal, backend.chain, backend.facilitator), store).run_once(args.wait)
    ended = dict(sorted((report.ended or {}).items()))
    if args.json:
        _out(
            json.dumps(
                {"examined": report.examined, "errors": report.errors, "skipped": report.skipped, "ended": ended}
            )
        )
    elif report.skipped:
        _out(f"skipped: another reconcile pass still held the lock after {args.wait:g} s")
    else:
        states = ", ".join(f"{state} {n}" for state, n in ended.items()) or "-"
        _out(f"examined {report.examined} open records, errors {report.errors}; they ended: {states}")
    return 1 if report.skipped or report.errors else 0


def add_ledger_commands(sub: Any) -> None:
    """Register ``ledger`` (list, export, summary, audit, reconcile) on the CLI's subparsers."""
    ledger = sub.add_parser("ledger", help="list, export, summarize, audit and reconcile payments").add_subparsers(
        dest="ledger_command", required=True
    )

    def common(p: argparse.ArgumentParser, times: bool = True) -> None:
        p.add_argument("--config", required=True, help="the service's config TOML")
        if times:
            p.add_argument(
                "--since",
                type=_time_arg,
                help="from this time (ISO 8601, UTC unless it says otherwise; or unix seconds)",
            )
            p.add_argument("--until", type=_time_arg, help="before this time (exclusive; same forms)")

    listing = ledger.add_parser("list", help="records created in a time range, newest last")
    common(listing)
    listing.add_argument("--state", choices=STATES, help="only records in this state")
    listing.add_argument("--payer", help="payer address (any case)")
    listing.add_argument("--limit", type=int, default=50, help="show the newest N matching records (default 50)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line (every field but payment)")
    listing.set_defaults(func=_run(_list))

    export = ledger.add_parser("export", help="every record created in a time range, all fields")
    common(export)
    export.add_argument("--format", choices=("csv", "jsonl"), required=True, help="csv or JSON lines")
    export.add_argument("--out", help="write to this file (default: stdout)")
    export.add_argument(
        "--with-payment", action="store_true", help="include the signed payment (usable by anyone while valid)"
    )
    export.set_defaults(func=_run(_export))

    summary = ledger.add_parser("summary", help="revenue, upstream cost and margin of records created in a range")
    common(summary)
    summary.add_argument("--by", choices=GROUPINGS, help="one row per model, payer or UTC day")
    summary.add_argument("--json", action="store_true", help="one JSON object")
    summary.set_defaults(func=_run(_summary))

    check = ledger.add_parser("audit", help="settled records against the asset's transfers to pay_to on chain")
    common(check, times=False)
    check.add_argument("--from-block", type=int, default=0, help="first block to read (default 0)")
    check.add_argument("--json", action="store_true", help="one JSON object (differences included)")
    check.set_defaults(func=_run(_audit))

    reconcile = ledger.add_parser("reconcile", help="one reconcile pass over open records (safe beside the service)")
    common(reconcile, times=False)
    reconcile.add_argument(
        "--wait", type=float, default=10.0, help="seconds to wait for another pass to finish (default 10)"
    )
    reconcile.add_argument("--json", action="store_true", help="one JSON object")
    reconcile.set_defaults(func=_run(_reconcile))
