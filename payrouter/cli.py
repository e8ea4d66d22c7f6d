"""The ``payrouter`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import httpx

from payrouter import __version__
from payrouter.agent_cli import add_agent_commands, read_password, refuse_existing
from payrouter.ledger_cli import add_ledger_commands
from payrouter.logs_cli import add_logs_command
from payrouter.routing.data import DATA_HELP
from payrouter.routing.predictor import DEFAULT_L2, DEFAULT_STEPS
from payrouter.settings import ConfigError
from pricing import (
    PricingError,
    estimate_chat_input_tokens,
    load_price_table,
    quote_route,
)
from wallets import LocalSigner, WalletError, load_keystore, save_keystore

__all__ = ["main"]


def _cmd_keys_new(args: argparse.Namespace) -> int:
    refuse_existing(args.out)
    signer = LocalSigner.generate()
    path = save_keystore(signer, args.out, read_password(args, confirm=True))
    print(json.dumps({"address": signer.address, "keystore": str(path)}))
    return 0


def _cmd_keys_address(args: argparse.Namespace) -> int:
    print(load_keystore(args.keystore, read_password(args)).address)
    return 0


def _cmd_prices_check(args: argparse.Namespace) -> int:
    from payrouter.startup_checks import predictor_problem

    table = load_price_table(args.table)
    if problem := predictor_problem(table):
        print(f"error: {args.table}: {problem}", file=sys.stderr)
        return 2
    print(f"ok: {len(table.models)} models on {table.network}, asset {table.asset.address}, pay_to {table.pay_to}")
    for model in table.models:
        print(
            f"  {model.id:<24} {model.provider:<10} in ${model.input_per_mtok}/M out ${model.output_per_mtok}/M "
            f"markup {model.markup} ctx {model.context_window}"
        )
    return 0


def _cmd_prices_quote(args: argparse.Namespace) -> int:
    table = load_price_table(args.table)
    model = args.model or table.default_model
    input_tokens = args.input_tokens
    output_tokens = args.output_tokens
    if args.request:
        request = json.loads(Path(args.request).read_text() if args.request != "-" else sys.stdin.read())
        input_tokens = estimate_chat_input_tokens(request.get("messages", []), request.get("tools"))
        model = args.model or (request.get("model") if request.get("model") not in (None, "auto") else model)
        output_tokens = request.get("max_completion_tokens") or request.get("max_tokens") or output_tokens
    quote = quote_route(table, model, input_tokens, output_tokens)
    print(
        json.dumps(
            {
                "model": quote.model_id,
                "input_tokens": quote.input_tokens,
                "output_tokens": quote.output_tokens,
                "upstream_cost": str(quote.upstream_cost),
                "amount": str(quote.amount),
                "asset": table.asset.address,
                "network": table.network,
            }
        )
    )
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from payrouter.app import create_app
    from payrouter.serving_limits import uvicorn_options
    from payrouter.startup_checks import StartupError, check_startup
    from payrouter.workers import exit_zero_after_signal, quiet_http_logs

    try:
        report = check_startup(args.config)
    except StartupError as exc:
        print(exc.report(), file=sys.stderr)
        return 2
    settings = report.settings
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_http_logs()
    for warning in report.warnings:
        logging.getLogger("payrouter").warning("%s", warning)
    if settings.redis_url:
        from payrouter.store.persistence import warn_unless_persistent

        warn_unless_persistent(settings.redis_url)
    host = args.host or settings.server.host
    port = args.port if args.port is not None else settings.server.port
    workers = args.workers if args.workers is not None else settings.server.workers
    if workers > 1:
        if not settings.redis_url:
            raise ConfigError("more than one worker needs redis_url: workers share their state through Redis")
        from payrouter.workers import Supervisor

        return Supervisor(args.config, host, port, workers).run()
    limits = uvicorn_options(settings.server)
    app = create_app(settings)
    exit_zero_after_signal()
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False, **limits)
    return 0


def _cmd_dev(args: argparse.Namespace) -> int:
    import asyncio

    from payrouter.sandbox.dev import EXAMPLE_TABLE, Sandbox, run_sandbox

    def ready(box: Sandbox) -> None:
        info = box.describe()
        if args.json:
            print(json.dumps(info), flush=True)
            return
        print(f"payrouter sandbox ready at {info['router_url']}", flush=True)
        for key in ("rpc_url", "network", "asset", "asset_name", "asset_version", "pay_to", "upstream_url"):
            print(f"  {key:<14} {info[key]}")
        for i, key in enumerate(info["agent_private_keys"]):
            print(f"  agent {i} key  {key}  ({box.agents[i].address}, 100 {box.table.asset.name})")
        print("Fund another wallet: .venv/bin/payrouter dev fund ADDRESS [AMOUNT]", flush=True)
        print("Ctrl-C stops everything.", flush=True)

    table = Path(args.table) if args.table else EXAMPLE_TABLE
    asyncio.run(run_sandbox(ready, table, args.host, args.port, args.agents, args.redis_url, args.redis_cluster))
    return 0


def _decimal_units(value: str, decimals: int, flag: str) -> int:
    from decimal import Decimal, InvalidOperation

    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise ValueError(f"{flag} must be a number like 100 or 0.5, got {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"{flag} must be a non-negative number, got {value!r}")
    return int(amount.scaleb(decimals).to_integral_value(rounding="ROUND_FLOOR"))


def _cmd_dev_fund(args: argparse.Namespace) -> int:
    from eth_utils.address import is_address

    from payrouter.gas_funds import format_eth
    from payrouter.sandbox.dev import SandboxNotRunning, fund, sandbox_file

    if not is_address(args.address):
        raise ValueError(f"{args.address!r} is not an address (0x and 40 hex digits)")
    path = Path(args.sandbox_file) if args.sandbox_file else sandbox_file()
    try:
        state = json.loads(path.read_text())
        decimals = int(state["decimals"])
    except (OSError, ValueError, KeyError):
        decimals = 6  # the dev stablecoin's; fund() says below that no sandbox runs
    try:
        done = fund(
            args.address,
            _decimal_units(args.amount, decimals, "AMOUNT"),
            _decimal_units(args.eth, 18, "--eth"),
            path,
        )
    except SandboxNotRunning as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    units, frac = divmod(done.token_balance, 10**done.decimals)
    whole = f"{units}.{frac:0{done.decimals}d}"
    print(
        f"funded {done.address} on {done.network}: +{args.amount} {done.asset_name}, +{args.eth} ETH; "
        f"it now holds {whole} {done.asset_name} ({done.token_balance} atomic) and {format_eth(done.eth_balance)}"
    )
    return 0


def _cmd_router_train(args: argparse.Namespace) -> int:
    from payrouter.progress import Progress
    from payrouter.routing.data import read_routing_data
    from payrouter.routing.predictor import QualityPredictor, load_feedback

    progress = Progress()
    with progress.task("reading routing data"):
        rows = read_routing_data(args.data)
        feedback = load_feedback(args.feedback or [])
    models = sorted(rows[0].scores)
    with progress.task(f"training on {len(rows)} prompts x {len(models)} models") as task:
        predictor = QualityPredictor.train(rows, l2=args.l2, steps=args.steps, feedback=feedback)
        predictor.save(args.out)
    rated = f" and {predictor.meta.get('feedback_rows', 0)} rated calls" if args.feedback else ""
    print(
        f"trained on {len(rows)} prompts{rated} x {len(predictor.models)} models in {task.elapsed():.1f} s -> {args.out}"
    )
    return 0


def _print_eval(result: dict[str, object], as_json: bool) -> None:
    from payrouter.routing.evaluate import format_result

    print(json.dumps(result) if as_json else format_result(result))


def _cmd_router_eval(args: argparse.Namespace) -> int:
    from payrouter.routing.data import read_routing_data
    from payrouter.routing.evaluate import evaluate, task_best_scorer, tfidf_knn_scorer
    from payrouter.routing.predictor import QualityPredictor

    predictor = QualityPredictor.load(args.router)
    rows = read_routing_data([args.data])
    extra = {}
    if args.train:
        train = read_routing_data(args.train)
        models = [m for m in predictor.models if m in rows[0].scores]
        extra = {"tfidf_knn": tfidf_knn_scorer(train, models), "best_model_per_task": task_best_scorer(train, models)}
    result = evaluate(predictor, rows, args.reference, extra)
    _print_eval(result, args.json)
    if args.plot:
        from payrouter.routing.plot import plot_curve

        plot_curve(result, args.plot)
    return 0


def _cmd_router_cv(args: argparse.Namespace) -> int:
    from payrouter.progress import Progress
    from payrouter.routing.data import read_routing_data
    from payrouter.routing.evaluate import cross_validate

    if args.folds < 2:
        raise ValueError(f"--folds must be >= 2 (got {args.folds}): each fold is held out once while the others train")
    progress = Progress()
    with progress.task("reading routing data"):
        rows = read_routing_data(args.data)
    with progress.task(f"cross-validating {len(rows)} prompts", total=args.folds) as task:
        result = cross_validate(
            rows, args.reference, folds=args.folds, seed=args.seed, on_fold=lambda _fold: task.advance()
        )
    _print_eval(result, args.json)
    if args.plot:
        from payrouter.routing.plot import plot_curve

        plot_curve(result, args.plot)
    return 0


def _cmd_router_holdout(args: argparse.Namespace) -> int:
    import csv
    import random

    from payrouter.routing.data import read_routing_data

    if not 0 < args.share < 1:
        raise ValueError(f"--share must be a share between 0 and 1, got {args.share}")
    read_routing_data([args.data])  # the format check, with its clear error
    for out in (args.train_out, args.test_out):
        if Path(out).exists() and not args.force:
            raise ValueError(f"{out} exists: pass --force to replace it")
    csv.field_size_limit(1 << 26)
    with open(args.data, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or [])
        records = list(reader)
    order = list(range(len(records)))
    random.Random(args.seed).shuffle(order)
    n_test = max(1, round(len(records) * args.share))
    test = set(order[:n_test])
    for out, keep in ((args.train_out, False), (args.test_out, True)):
        with open(out, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, columns)
            writer.writeheader()
            writer.writerows(r for i, r in enumerate(records) if (i in test) == keep)
    print(f"{len(records) - n_test} rows -> {args.train_out} (train), {n_test} rows -> {args.test_out} (held out)")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from payrouter.demo import run_demo  # web3 and the chain are only needed here

    return run_demo(Path(args.table)) if args.table else run_demo()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="payrouter", description="An AI model router agents pay per call (x402).")
    parser.add_argument("--version", action="version", version=f"payrouter {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    keys = sub.add_parser("keys", help="create and inspect encrypted keystores").add_subparsers(
        dest="keys_command", required=True
    )
    new = keys.add_parser("new", help="generate a key into a new keystore file")
    new.add_argument("--out", required=True, help="keystore path to create (never overwritten)")
    new.add_argument("--password-env", help="read the password from this environment variable")
    new.set_defaults(func=_cmd_keys_new)
    address = keys.add_parser("address", help="decrypt a keystore and print its address")
    address.add_argument("keystore", help="the keystore file")
    address.add_argument("--password-env", help="read the password from this environment variable")
    address.set_defaults(func=_cmd_keys_address)

    prices = sub.add_parser("prices", help="check price tables and price requests").add_subparsers(
        dest="prices_command", required=True
    )
    check = prices.add_parser("check", help="validate a price table")
    check.add_argument("table", help="price table TOML (see examples/prices.toml)")
    check.set_defaults(func=_cmd_prices_check)
    quote = prices.add_parser("quote", help="price one route or one chat request")
    quote.add_argument("table", help="price table TOML")
    quote.add_argument("--model", help="catalog id (default: the request's model, else default_model)")
    quote.add_argument("--input-tokens", type=int, default=0, help="input tokens to price (default 0)")
    quote.add_argument("--output-tokens", type=int, default=256, help="output token budget to price (default 256)")
    quote.add_argument("--request", help="an OpenAI chat request JSON file ('-' for stdin) to estimate from")
    quote.set_defaults(func=_cmd_prices_quote)

    serve = sub.add_parser("serve", help="run the router from a config file")
    serve.add_argument("--config", required=True, help="service config TOML (see examples/payrouter.toml)")
    serve.add_argument("--host", help="override [server].host")
    serve.add_argument("--port", type=int, help="override [server].port")
    serve.add_argument("--workers", type=int, help="override [server].workers (server processes on one port)")
    serve.set_defaults(func=_cmd_serve)

    dev = sub.add_parser("dev", help="local sandbox: chain, token, funded agents, test upstream and router")
    dev.add_argument("--json", action="store_true", help="print one JSON line when ready")
    dev.add_argument("--host", default="127.0.0.1", help="router address to bind (default 127.0.0.1)")
    dev.add_argument("--port", type=int, default=8402, help="router port (0 picks a free one)")
    dev.add_argument("--agents", type=int, default=3, help="funded agent accounts to create")
    dev.add_argument("--table", help="price table (default: examples/prices.toml)")
    dev.add_argument("--redis-url", help="share state through Redis instead of memory")
    dev.add_argument(
        "--redis-cluster",
        action="store_true",
        help="start a local Redis Cluster (3 masters, 3 replicas on free ports) and share state through it",
    )
    dev.set_defaults(func=_cmd_dev)
    dev_sub = dev.add_subparsers(dest="dev_command", metavar="{fund}")
    dev_fund = dev_sub.add_parser(
        "fund",
        help="sandbox only: mint dev stablecoin and add gas ETH to an address on the running sandbox",
        description="Funds ADDRESS on the chain of the `payrouter dev` sandbox running on this machine "
        "(it records itself in $PAYROUTER_SANDBOX_FILE or ~/.payrouter/sandbox.json).",
    )
    dev_fund.add_argument("address", help="the wallet to fund (0x...)")
    dev_fund.add_argument("amount", nargs="?", default="100", help="whole tokens of the dev stablecoin (default 100)")
    dev_fund.add_argument("--eth", default="1", help="ETH for gas to add (default 1)")
    dev_fund.add_argument(
        "--sandbox-file",
        help="the running sandbox's file (default: $PAYROUTER_SANDBOX_FILE or ~/.payrouter/sandbox.json)",
    )
    dev_fund.set_defaults(func=_cmd_dev_fund)

    router = sub.add_parser(
        "router",
        help="train and evaluate the learned router on RouterBench-format CSVs",
        description=f"Routing data is {DATA_HELP}. It is not shipped: see the README.",
    ).add_subparsers(dest="router_command", required=True)
    train = router.add_parser("train", help="train a router file from RouterBench-format CSVs")
    train.add_argument("--data", action="append", required=True, help="training CSV (repeatable)")
    train.add_argument("--out", required=True, help="router file to write (.npz)")
    train.add_argument("--l2", type=float, default=DEFAULT_L2, help="L2 regularisation strength")
    train.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="optimiser steps")
    train.add_argument(
        "--feedback",
        action="append",
        metavar="FROM_LOG",
        help="request log whose payer ratings (feedback events) are folded in (repeatable)",
    )
    train.set_defaults(func=_cmd_router_train)
    evaluate = router.add_parser(
        "eval", help="evaluate a router file on rows it was not trained on (rows used in training are refused)"
    )
    evaluate.add_argument("--router", required=True, help="router file (.npz) from `router train`")
    evaluate.add_argument("--data", required=True, help="held-out CSV: rows the router was not trained on")
    evaluate.add_argument("--reference", required=True, help="model to compare with, e.g. gpt-4-1106-preview")
    evaluate.add_argument("--train", action="append", help="training CSV, to add the TF-IDF kNN and per-task baselines")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object (default: a table)")
    evaluate.add_argument("--plot", help="write the cost-quality curve as a PNG (needs matplotlib)")
    evaluate.set_defaults(func=_cmd_router_eval)
    cv = router.add_parser("cv", help="k-fold cross-validation by prompt, with both baselines")
    cv.add_argument("--data", action="append", required=True, help="CSV to cross-validate on (repeatable)")
    cv.add_argument("--reference", required=True, help="model to compare with, e.g. gpt-4-1106-preview")
    cv.add_argument("--folds", type=int, default=5, help="number of folds, at least 2 (default 5)")
    cv.add_argument("--seed", type=int, default=0, help="seed of the shuffle that assigns rows to folds")
    cv.add_argument("--json", action="store_true", help="print one JSON object (default: a table)")
    cv.add_argument("--plot", help="write the pooled cost-quality curve as a PNG (needs matplotlib)")
    cv.set_defaults(func=_cmd_router_cv)
    split = router.add_parser("holdout", help="split a CSV into training rows and held-out rows for `router eval`")
    split.add_argument("--data", required=True, help="the CSV to split (RouterBench format)")
    split.add_argument("--train-out", required=True, help="CSV to write the training rows to")
    split.add_argument("--test-out", required=True, help="CSV to write the held-out rows to")
    split.add_argument("--share", type=float, default=0.2, help="share of rows held out (default 0.2)")
    split.add_argument("--seed", type=int, default=0, help="seed of the shuffle (default 0)")
    split.add_argument("--force", action="store_true", help="replace existing output files")
    split.set_defaults(func=_cmd_router_holdout)

    add_agent_commands(sub)
    add_ledger_commands(sub)
    add_logs_command(sub)

    demo = sub.add_parser("demo", help="price a request and settle its payment on a local anvil chain")
    demo.add_argument("--table", help="price table (default: examples/prices.toml)")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``payrouter`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except (PricingError, WalletError, ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, json.JSONDecodeError, httpx.HTTPError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
