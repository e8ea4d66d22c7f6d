"""Agent CLI commands for ``batch-settlement`` payment channels: ``wallet channels`` and ``wallet refund``.

Channel states live in ``--channels-dir`` (default ``$PAYROUTER_CHANNELS_DIR``, else
``~/.payrouter/channels``), the directory ``payrouter chat`` pays from. Amounts are printed
in atomic units of the channel's token (the store does not know its decimals).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import httpx

from payrouter.client import ChannelState, FileBudgetStore, FileChannelStore, RefundError, refund_channel
from wallets import Signer

__all__ = ["add_channel_commands", "add_channel_options", "channel_store"]

CHANNELS_ENV = "PAYROUTER_CHANNELS_DIR"


def _say(text: str, err: bool = False) -> None:
    """One line of command output (stdout) or diagnostics (stderr)."""
    (sys.stderr if err else sys.stdout).write(text + "\n")


def channel_store(args: argparse.Namespace) -> FileChannelStore:
    """The file channel store the command line names (``--channels-dir``, env, default)."""
    return FileChannelStore(getattr(args, "channels_dir", None) or os.environ.get(CHANNELS_ENV))


def add_channel_options(p: argparse.ArgumentParser) -> None:
    """``--channels-dir``: shared by ``chat`` and the channel commands."""
    p.add_argument("--channels-dir", help=f"channel states (default ${CHANNELS_ENV} or ~/.payrouter/channels)")


def _row(state: ChannelState) -> dict[str, Any]:
    config = state.config
    return {
        "channel_id": state.channel_id,
        "network": state.network,
        "token": config.get("token"),
        "payer": config.get("payer"),
        "receiver": config.get("receiver"),
        "balance": str(state.balance),
        "charged": str(state.charged),
        "remaining": str(state.remaining),
        "refunded": str(state.refunded),
        "url": state.url,
    }


def _cmd_channels(args: argparse.Namespace) -> int:
    rows = [_row(s) for s in channel_store(args).list()]
    if args.json:
        _say(json.dumps(rows))
        return 0
    if not rows:
        _say("no channels")
        return 0
    _say(f"{'channel':<68} {'balance':>14} {'charged':>14} {'remaining':>14}  receiver")
    for row in rows:
        _say(
            f"{row['channel_id']:<68} {row['balance']:>14} {row['charged']:>14} {row['remaining']:>14}  {row['receiver']}"
        )
    return 0


def _cmd_refund(args: argparse.Namespace, signer_of: Callable[[argparse.Namespace], Signer]) -> int:
    signer = signer_of(args)
    store = channel_store(args)
    mine = [s for s in store.list() if str(s.config.get("payer", "")).lower() == signer.address.lower()]
    if args.channel:
        targets = [s for s in mine if s.channel_id.lower() == args.channel.lower()]
        if not targets:
            raise SystemExit(f"error: no channel {args.channel} of {signer.address} in {store.directory}")
    else:
        targets = [s for s in mine if s.remaining > 0]
        if not targets:
            _say("nothing to refund", err=True)
            return 0
    budget = FileBudgetStore(args.budget_file or os.environ.get("PAYROUTER_BUDGET_FILE"))
    failed = 0
    with httpx.Client(timeout=120) as http:
        for state in targets:
            url = args.url or state.url
            if not url:
                _say(f"error: channel {state.channel_id}: no paid URL known; pass --url", err=True)
                failed += 1
                continue
            try:
                result = refund_channel(
                    signer, url, store, budget=budget, rpc_url=args.rpc, http=http, method=args.method
                )
            except (RefundError, httpx.HTTPError) as exc:
                _say(f"error: channel {state.channel_id}: {exc}", err=True)
                failed += 1
                continue
            out = {
                "channel_id": result.channel_id,
                "refunded": str(result.amount),
                "remaining": str(result.remaining),
                "transaction": result.transaction,
            }
            if args.json:
                _say(json.dumps(out))
            else:
                _say(f"{result.channel_id}: refunded {result.amount} (tx {result.transaction or '-'})")
    return 2 if failed else 0


def add_channel_commands(
    wallet: Any,
    key_options: Callable[[argparse.ArgumentParser], None],
    signer_of: Callable[[argparse.Namespace], Signer],
) -> None:
    """Register ``wallet channels`` and ``wallet refund`` on the ``wallet`` subparsers."""
    channels = wallet.add_parser("channels", help="list the local payment channels (batch-settlement)")
    add_channel_options(channels)
    channels.add_argument("--json", action="store_true", help="print the channels as one JSON list")
    channels.set_defaults(func=_cmd_channels)

    refund = wallet.add_parser("refund", help="ask servers to refund what is left in your channels")
    key_options(refund)
    add_channel_options(refund)
    refund.add_argument("--channel", help="only this channel id (default: every channel with money left)")
    refund.add_argument("--url", help="a paid URL of the channel's server (default: the last one paid)")
    refund.add_argument("--method", default="GET", help="HTTP method of the refund request (default GET)")
    refund.add_argument("--rpc", help="JSON-RPC URL, to read a channel the local state lost")
    refund.add_argument("--budget-file", help="the budget credited with refunds (default ~/.payrouter/spend.json)")
    refund.add_argument("--json", action="store_true", help="one JSON object per refunded channel")
    refund.set_defaults(func=lambda args: _cmd_refund(args, signer_of))
