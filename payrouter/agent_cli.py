"""Agent-side commands of the ``payrouter`` CLI: ``wallet``, ``quote``, ``chat``.

``chat --scheme auto`` (or ``batch-settlement``) pays from a ``batch-settlement`` payment channel
when the router offers one: a deposit locks money in the channel, so channels are opt-in
(channel commands: `payrouter.agent_channels`); the default pays ``exact``.

The key comes from ``PAYROUTER_PRIVATE_KEY`` or an encrypted ``--keystore`` (password from
``--password-env`` or a prompt). Prices on the command line are USD; the SDK works in atomic
units of the router's asset (its decimals come from ``GET /v1/models``).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx

from payrouter.agent_channels import add_channel_commands, add_channel_options, channel_store
from payrouter.chain import encode_balance_of
from payrouter.client import (
    ChannelOptions,
    ChannelResponseError,
    FileBudgetStore,
    PaymentOfferError,
    PaymentRefused,
    PaymentTransport,
    SpendingPolicy,
    receipt_of,
)
from wallets import LocalSigner, load_keystore, save_keystore

__all__ = ["add_agent_commands", "read_password"]

KEY_ENV = "PAYROUTER_PRIVATE_KEY"
# Without --max-price, ``chat`` refuses to pay more than this per call (USD; $PAYROUTER_MAX_PRICE
# overrides): a typo'd prompt or a surprising route should not cost more than a few cents.
DEFAULT_MAX_PRICE = "0.10"
MAX_PRICE_ENV = "PAYROUTER_MAX_PRICE"


def read_password(args: argparse.Namespace, confirm: bool = False) -> str:
    """The keystore password: from ``--password-env``'s variable, else a prompt (twice to confirm).

    Raises:
        SystemExit: the variable is unset, there is no terminal to prompt on, or the entries differ.
    """
    if getattr(args, "password_env", None):
        value = os.environ.get(args.password_env)
        if not value:
            raise SystemExit(f"error: environment variable {args.password_env} is empty or unset")
        return value
    if not sys.stdin.isatty():
        raise SystemExit(
            "error: no terminal to ask for the keystore password on: put it in an environment variable "
            "and pass its name with --password-env NAME"
        )
    password = getpass.getpass("keystore password: ")
    if confirm and getpass.getpass("repeat password: ") != password:
        raise SystemExit("error: passwords differ")
    if not password:
        raise SystemExit("error: empty password")
    return password


def refuse_existing(path: str) -> None:
    """Stop before any prompt when the keystore to create exists (it is never overwritten)."""
    if os.path.lexists(path):
        raise SystemExit(f"error: {path} exists; keystores are never overwritten: choose another path")


def _signer(args: argparse.Namespace) -> LocalSigner:
    if getattr(args, "keystore", None):
        return load_keystore(args.keystore, read_password(args))
    key = os.environ.get(KEY_ENV)
    if not key:
        raise SystemExit(f"error: set {KEY_ENV} or pass --keystore FILE")
    return LocalSigner(key)


def _usd_to_atomic(value: str | None, decimals: int, flag: str) -> int | None:
    if value is None:
        return None
    try:
        usd = Decimal(value)
    except InvalidOperation:
        raise SystemExit(f"error: {flag} must be a USD amount like 0.01") from None
    if usd < 0 or not usd.is_finite():
        raise SystemExit(f"error: {flag} must be a non-negative USD amount")
    return int((usd * 10**decimals).to_integral_value(rounding="ROUND_FLOOR"))


def _format(amount: int, decimals: int) -> str:
    whole, frac = divmod(amount, 10**decimals)
    return f"${whole}.{frac:0{decimals}d}"


def _catalog(router: str) -> dict[str, Any]:
    url = f"{router.rstrip('/')}/v1/models"
    try:
        reply = httpx.get(url, timeout=30)
        reply.raise_for_status()
    except httpx.HTTPError as exc:
        raise SystemExit(f"error: cannot read the router's catalog at {url}: {exc}") from None
    data: dict[str, Any] = reply.json()
    return data


def _body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"model": args.model, "messages": [{"role": "user", "content": args.prompt}]}
    if args.max_tokens:
        body["max_tokens"] = args.max_tokens
    return body


def _cmd_wallet_new(args: argparse.Namespace) -> int:
    signer = LocalSigner.generate()
    if args.keystore:
        refuse_existing(args.keystore)
        save_keystore(signer, args.keystore, read_password(args, confirm=True))
        print(json.dumps({"address": signer.address, "keystore": args.keystore}))
    elif args.print_key:
        print(f"{KEY_ENV}={signer.unsafe_export_private_key()}")
        print(f"# address {signer.address}", file=sys.stderr)
    else:
        raise SystemExit("error: pass --keystore FILE (encrypted) or --print-key (prints the key in clear)")
    return 0


def _cmd_wallet_show(args: argparse.Namespace) -> int:
    print(_signer(args).address)
    return 0


def _sandbox_rpc(router: str) -> str:
    """The JSON-RPC URL of the running ``payrouter dev`` sandbox whose router is ``router``."""
    from payrouter.sandbox.dev import sandbox_file

    try:
        state = json.loads(sandbox_file().read_text())
    except (OSError, ValueError):
        state = {}
    if state.get("router_url", "").rstrip("/") == router.rstrip("/") and state.get("rpc_url"):
        return str(state["rpc_url"])
    raise SystemExit(
        f"error: pass --rpc URL, a JSON-RPC node of the router's network ({router} is not the running sandbox, "
        "whose chain is found by itself)"
    )


def _cmd_wallet_balance(args: argparse.Namespace) -> int:
    address = _signer(args).address
    payment = _catalog(args.router)["payment"]
    if args.rpc is None:
        args.rpc = _sandbox_rpc(args.router)
    asset, decimals = payment["asset"]["address"], int(payment["asset"]["decimals"])
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "eth_call",
        "params": [{"to": asset, "data": encode_balance_of(address)}, "latest"],
    }
    try:
        answer = httpx.post(args.rpc, json=body, timeout=30)
        answer.raise_for_status()
        reply = answer.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise SystemExit(
            f"error: cannot reach the JSON-RPC node at {args.rpc}: {exc} "
            "(the sandbox's is the rpc_url that `payrouter dev` prints)"
        ) from None
    if "error" in reply:
        raise SystemExit(f"error: RPC {args.rpc}: {reply['error'].get('message')}")
    atomic = int(reply["result"], 16)
    out = {"address": address, "network": payment["network"], "asset": asset, "balance": str(atomic)}
    print(
        json.dumps(out)
        if args.json
        else f"{address} holds {_format(atomic, decimals)} ({atomic} atomic) on {payment['network']}"
    )
    return 0


def _funding_hint(address: str, payment: dict[str, Any]) -> str:
    asset = payment["asset"]
    return (
        f"the wallet {address} holds too little {asset.get('name') or 'of the asset'} ({asset['address']}) "
        f"on {payment['network']} for this call. On the local sandbox: .venv/bin/payrouter dev fund {address}; "
        f"elsewhere, send it {asset.get('name') or 'the asset'} on {payment['network']}"
    )


def _cmd_quote(args: argparse.Namespace) -> int:
    reply = httpx.post(f"{args.router.rstrip('/')}/v1/quote", json=_body(args), timeout=30)
    data = reply.json()
    if reply.status_code != 200:
        raise SystemExit(f"error: {data.get('error', {}).get('message', reply.text)}")
    if args.json:
        print(json.dumps(data))
        return 0
    route, price = data["route"], data["price"]
    print(f"model   {route['model']} ({route['reason']})")
    print(f"tokens  ~{route['input_tokens']} in, up to {route['max_output_tokens']} out")
    print(
        f"price   {_format(int(price['amount']), int(price['decimals']))} ({price['amount']} atomic) on {price['network']}"
    )
    return 0


def _cmd_chat(args: argparse.Namespace) -> int:
    signer = _signer(args)
    payment = _catalog(args.router)["payment"]
    decimals = int(payment["asset"]["decimals"])
    policy = SpendingPolicy(
        max_per_call=_usd_to_atomic(args.max_price, decimals, "--max-price"),
        per_hour=_usd_to_atomic(args.per_hour, decimals, "--per-hour"),
        per_day=_usd_to_atomic(args.per_day, decimals, "--per-day"),
    )
    budget = FileBudgetStore(args.budget_file or os.environ.get("PAYROUTER_BUDGET_FILE"))
    channels = None
    if args.scheme != "exact":
        channels = ChannelOptions(
            store=channel_store(args),
            rpc_url=args.rpc,
            deposit=_usd_to_atomic(args.deposit, decimals, "--deposit"),
            max_deposit=_usd_to_atomic(args.max_deposit, decimals, "--max-deposit"),
        )
    transport = PaymentTransport(signer, policy, budget, channels=channels, scheme=args.scheme)
    try:
        with httpx.Client(transport=transport, timeout=120) as http:
            reply = http.post(f"{args.router.rstrip('/')}/v1/chat/completions", json=_body(args))
    except PaymentRefused as exc:
        print(f"refused ({exc.limit}): {exc}", file=sys.stderr)
        return 3
    except (PaymentOfferError, ChannelResponseError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if reply.status_code != 200:
        try:
            message = reply.json().get("error")
        except ValueError:
            message = reply.text
        print(f"error: HTTP {reply.status_code}: {message}", file=sys.stderr)
        if "insufficient_funds" in str(message):
            print(_funding_hint(signer.address, payment), file=sys.stderr)
        return 2
    data = reply.json()
    answer = data["choices"][0]["message"]["content"]
    receipt = receipt_of(reply)
    # paid by channel: the price is what the server charged (the signed amount was a maximum)
    paid = receipt.charged if receipt and receipt.charged is not None else receipt.amount if receipt else 0
    result: dict[str, Any] = {
        "answer": answer,
        "model": reply.headers.get("x-payrouter-model", data.get("model")),
        "amount": str(paid),
        "asset": receipt.asset if receipt else None,
        "network": receipt.network if receipt else None,
        "transaction": receipt.transaction if receipt else None,
    }
    if receipt is not None and receipt.channel_id is not None:
        result |= {
            "scheme": receipt.scheme,
            "charged": None if receipt.charged is None else str(receipt.charged),
            "max_amount": str(receipt.amount),
            "channel_id": receipt.channel_id,
            "deposit": str(receipt.deposit),
        }
    if args.json:
        print(json.dumps(result))
    else:
        print(answer)
        paid_by = f"channel {receipt.channel_id}" if receipt and receipt.channel_id else f"tx {result['transaction']}"
        print(f"\nmodel {result['model']} | price {_format(paid, decimals)} | {paid_by}")
    return 0


def add_agent_commands(sub: Any) -> None:
    """Register ``wallet``, ``quote`` and ``chat`` on the CLI's subparsers."""

    def key_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--keystore", help=f"encrypted keystore (default: ${KEY_ENV})")
        p.add_argument("--password-env", help="read the keystore password from this environment variable")

    wallet = sub.add_parser("wallet", help="the agent's wallet").add_subparsers(dest="wallet_command", required=True)
    new = wallet.add_parser("new", help="create a key")
    new.add_argument("--keystore", help="write it to this encrypted keystore file")
    new.add_argument("--password-env", help="read the keystore password from this environment variable")
    new.add_argument("--print-key", action="store_true", help=f"print {KEY_ENV}=0x... (in clear!)")
    new.set_defaults(func=_cmd_wallet_new)
    show = wallet.add_parser("show", help="print the wallet's address")
    key_options(show)
    show.set_defaults(func=_cmd_wallet_show)
    balance = wallet.add_parser("balance", help="the wallet's balance of the router's payment asset")
    key_options(balance)
    balance.add_argument("--router", required=True, help="router base URL (its asset and network)")
    balance.add_argument(
        "--rpc", help="JSON-RPC URL of that network (default: the running sandbox's, when --router is the sandbox)"
    )
    balance.add_argument("--json", action="store_true", help="print one JSON object")
    balance.set_defaults(func=_cmd_wallet_balance)
    add_channel_commands(wallet, key_options, _signer)

    for name, func, help_text in (
        ("quote", _cmd_quote, "price a prompt without paying (POST /v1/quote)"),
        ("chat", _cmd_chat, "ask a paid question"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("prompt", help="the question, as one user message")
        p.add_argument("--router", required=True, help="router base URL, e.g. http://127.0.0.1:8402")
        p.add_argument(
            "--model", default="auto", help="catalog id, or auto / auto:cost / auto:quality ... (default auto)"
        )
        p.add_argument("--max-tokens", type=int, help="the answer's output token budget (default: the router's)")
        p.add_argument("--json", action="store_true", help="print one JSON object")
        p.set_defaults(func=func)
        if name == "chat":
            key_options(p)
            p.add_argument(
                "--max-price",
                default=os.environ.get(MAX_PRICE_ENV, DEFAULT_MAX_PRICE),
                help=f"refuse to pay more than this per call (USD; default {DEFAULT_MAX_PRICE}, ${MAX_PRICE_ENV})",
            )
            p.add_argument("--per-hour", help="rolling hourly budget (USD)")
            p.add_argument("--per-day", help="rolling daily budget (USD)")
            p.add_argument("--budget-file", help="where budgets are kept (default ~/.payrouter/spend.json)")
            p.add_argument(
                "--scheme",
                choices=("auto", "exact", "batch-settlement"),
                default=os.environ.get("PAYROUTER_SCHEME", "exact"),
                help="exact (default, $PAYROUTER_SCHEME): one transfer per call; batch-settlement: pay from "
                "a payment channel (deposits once); auto: a channel when offered and within --max-deposit, else exact",
            )
            add_channel_options(p)
            p.add_argument("--deposit", help="channel deposit size (USD; default 5 x the price)")
            p.add_argument("--max-deposit", help="refuse channel deposits above this (USD)")
            p.add_argument("--rpc", help="JSON-RPC URL, to recover channel state from the chain")
