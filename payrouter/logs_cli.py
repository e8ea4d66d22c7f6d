"""``payrouter logs``: filter the request log, and explain one request.

The request log (`payrouter.request_log`) has one JSON line per paid or refused request. This
command reads it from the file the service config's ``request_log`` names (or ``--file``),
filters by request id, payer, model, time range or refusals, and prints a table or the
matching lines (``--json``). ``--why REQUEST_ID`` answers "why did this request go to that model,
and what did it cost": the candidates the router weighed, the reason it chose, the price quoted
against the amount charged and the upstream cost, and the settlement transaction or refusal.

Errors (no log configured, an unreadable file, a bad time) are one line on stderr and exit 2;
``--why`` of an id that is not in the log exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from payrouter.ledger import parse_time, usd
from pricing import PricingError, load_price_table

__all__ = ["Filters", "add_logs_command", "explain", "read_events", "select"]


@dataclass(frozen=True, slots=True)
class Filters:
    """Which events to keep (every given condition must hold; times in unix milliseconds)."""

    request_id: str | None = None
    payer: str | None = None
    model: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    refusals: bool = False

    def keep(self, event: dict[str, Any]) -> bool:
        """True when ``event`` passes every condition."""
        if self.request_id is not None and event.get("request_id") != self.request_id:
            return False
        if self.payer is not None and str(event.get("payer", "")).lower() != self.payer.lower():
            return False
        if self.model is not None and self.model not in (event.get("model"), event.get("routed_model")):
            return False
        ts_ms = int(float(event.get("ts") or 0) * 1000)
        if self.since_ms is not None and ts_ms < self.since_ms:
            return False
        if self.until_ms is not None and ts_ms >= self.until_ms:
            return False
        return not self.refusals or event.get("event") == "refusal" or bool(event.get("refusal"))


def read_events(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The JSON objects of a request log's lines (a torn last line, or anything not an
    object, is skipped)."""
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            yield event


def select(events: Iterable[dict[str, Any]], filters: Filters, limit: int | None = None) -> list[dict[str, Any]]:
    """The events ``filters`` keeps, in log order; with ``limit``, only the newest ``limit``."""
    kept: deque[dict[str, Any]] = deque(maxlen=limit)
    kept.extend(e for e in events if filters.keep(e))
    return list(kept)


@dataclass(frozen=True, slots=True)
class Money:
    """How to show atomic amounts: as they are, and in the asset's units when known."""

    decimals: int | None = None
    symbol: str = "USD"

    def __call__(self, atomic: Any) -> str:
        if atomic is None or atomic == "":
            return "-"
        amount = int(atomic)
        if self.decimals is None:
            return f"{amount}"
        return f"{amount} ({usd(amount, self.decimals).rstrip('0').rstrip('.')} {self.symbol})"


def _when(event: dict[str, Any]) -> str:
    ts = event.get("ts")
    if ts is None:
        return "-"
    return datetime.fromtimestamp(float(ts), UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _short(address: Any) -> str:
    text = str(address or "-")
    return text if len(text) <= 14 else f"{text[:8]}..{text[-4:]}"


def _table(events: list[dict[str, Any]], out: TextIO) -> None:
    columns = ("time", "request", "event", "payer", "model", "scheme", "status", "price", "charged", "ms", "tx/refusal")
    rows = [
        (
            _when(e),
            str(e.get("request_id") or "-"),
            str(e.get("event", "-")),
            _short(e.get("payer")),
            str(e.get("model") or "-"),
            str(e.get("scheme") or "-"),
            str(e.get("status", "-")),
            str(e.get("price", "-")),
            str(e.get("charged", "-")),
            f"{float(e['latency_ms']):.1f}" if isinstance(e.get("latency_ms"), int | float) else "-",
            str(e.get("refusal") or e.get("tx") or "-"),
        )
        for e in events
    ]
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)]
    out.write("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip() + "\n")
    for row in rows:
        out.write("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() + "\n")


def explain(events: list[dict[str, Any]], money: Money) -> str:
    """A readable account of one request from its log events (the call or refusal first,
    then any feedback on it)."""
    main = next((e for e in events if e.get("event") in ("call", "refusal")), events[0])
    lines = [
        f"request   {main.get('request_id') or '(none: refused before serving)'}",
        f"when      {_when(main)}",
        f"endpoint  POST {main.get('endpoint', '-')} -> {main.get('status', '-')}",
        f"payer     {main.get('payer') or '-'}",
    ]
    routed, answered = main.get("routed_model") or main.get("model"), main.get("model")
    strategy = main.get("strategy") or "-"
    kind = main.get("reason_kind") or "-"
    lines.append(f"route     strategy {strategy}, reason kind {kind}")
    if main.get("reason"):
        lines.append(f"          {main['reason']}")
    if main.get("rule") or main.get("arm"):
        lines.append(f"          rule {main.get('rule') or '-'}, arm {main.get('arm') or '-'}")
    if main.get("event") == "refusal":
        lines.append(f"          would have gone to {routed}")
    elif routed and answered and routed != answered:
        lines.append(f"          routed to {routed}; it failed and {answered} answered (failover)")
    else:
        lines.append(f"          went to {answered}")
    candidates = main.get("candidates") or []
    if candidates:
        lines.append("candidates (best first; * = routed)")
        header = ("", "model", "quality", "price", "latency")
        rows = [
            (
                "*" if c.get("model") == routed else "",
                str(c.get("model")),
                f"{int(c.get('quality_bp', 0)) / 100:.1f}%",
                money(c.get("price")),
                f"{c.get('latency_ms', '-')} ms",
            )
            for c in candidates
        ]
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        lines.append("  " + "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
        for row in rows:
            lines.append("  " + "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    else:
        lines.append("candidates (not recorded)")
    price, charged, cost = main.get("price"), main.get("charged"), main.get("cost")
    lines.append(f"price     quoted {money(price)}, charged {money(charged)}")
    if isinstance(charged, int) and isinstance(cost, int):
        lines.append(f"cost      upstream {money(cost)}, margin {money(charged - cost)}")
    if main.get("event") == "call":
        lines.append(f"tokens    in {main.get('input_tokens', '-')}, out {main.get('output_tokens', '-')}")
    total, upstream = main.get("latency_ms"), main.get("upstream_ms")
    timing = f"time      total {total} ms" if total is not None else "time      -"
    if upstream is not None:
        timing += f", model {upstream} ms"
    lines.append(timing)
    scheme = main.get("scheme") or "-"
    if main.get("refusal"):
        message = f": {main['message']}" if main.get("message") else ""
        lines.append(f"payment   {scheme}, refused ({main['refusal']}){message}")
    else:
        lines.append(f"payment   {scheme}, {main.get('state') or '-'}, tx {main.get('tx') or '-'}")
    for fb in events:
        if fb.get("event") == "feedback":
            lines.append(f"feedback  {fb.get('rating')} from {fb.get('payer')} at {_when(fb)}")
    return "\n".join(lines) + "\n"


def _log_path(args: argparse.Namespace) -> tuple[Path, Money]:
    """The request log's path and how to show amounts, from ``--file`` or the service config."""
    money = Money()
    if args.config is None:
        return Path(args.file), money
    config = Path(args.config)
    try:
        doc = tomllib.loads(config.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config {config} is not valid TOML: {exc}") from None
    table = doc.get("price_table")
    if isinstance(table, str):
        try:
            asset = load_price_table(config.parent / table).asset
            money = Money(asset.decimals, "USD")  # tables price in USD stablecoins
        except (PricingError, OSError):
            pass  # amounts are shown in atomic units only
    if args.file is not None:
        return Path(args.file), money
    path = doc.get("request_log")
    if not isinstance(path, str) or not path or path == "-":
        raise ValueError(f'config {config} names no request_log file (set request_log = "requests.jsonl")')
    return config.parent / path, money


def _cmd_logs(args: argparse.Namespace) -> int:
    path, money = _log_path(args)
    filters = Filters(
        request_id=args.why or args.request_id,
        payer=args.payer,
        model=args.model,
        since_ms=parse_time(args.since) if args.since else None,
        until_ms=parse_time(args.until) if args.until else None,
        refusals=args.refusals,
    )
    with path.open(encoding="utf-8", errors="replace") as lines:
        events = select(read_events(lines), filters, None if args.why else args.limit)
    out = sys.stdout
    if args.json:
        for event in events:
            out.write(json.dumps(event, separators=(",", ":")) + "\n")
        return 0 if events or not args.why else 1
    if args.why:
        if not events:
            sys.stderr.write(f"no request {args.why!r} in {path}\n")
            return 1
        out.write(explain(events, money))
        return 0
    _table(events, out)
    return 0


def add_logs_command(sub: Any) -> None:
    """Register ``logs`` on the CLI's subparsers."""
    logs = sub.add_parser(
        "logs",
        help="filter the request log; --why REQUEST_ID explains one request",
        description="Filter the request log (one JSON line per paid or refused request).",
    )
    source = logs.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="the service's config TOML (its request_log and price table)")
    source.add_argument("--file", help="a request log file")
    logs.add_argument("--why", metavar="REQUEST_ID", help="explain one request: route, candidates, price, cost, tx")
    logs.add_argument("--request-id", help="only this request (a completion id, chatcmpl-... or msg_...)")
    logs.add_argument("--payer", help="only this payer address (any case)")
    logs.add_argument("--model", help="only requests routed to or answered by this model")
    logs.add_argument("--since", help="from this time (ISO 8601, UTC unless it says otherwise; or unix seconds)")
    logs.add_argument("--until", help="before this time (exclusive; same forms)")
    logs.add_argument("--refusals", action="store_true", help="only refused payments and calls that charged nothing")
    logs.add_argument("--limit", type=int, default=50, help="show the newest N matching lines (default 50)")
    logs.add_argument("--json", action="store_true", help="the matching lines as they are, one JSON object per line")
    logs.set_defaults(func=_cmd_logs)
