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
from payrouter.agent_cli import add_agent_commands, read_password
from payrouter.ledger_cli import add_ledger_commands
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
        print("Ctrl-C stops everything.", flush=True)

    table = Path(args.table) if args.table else EXAMPLE_TABLE
    asyncio.run(run_sandbox(ready, table, args.host, args.port, args.agents, args.redis_url))
    return 0


def _cmd_router_train(args: argparse.Namespace) -> int:
    import time

    from payrouter.routing.predictor import QualityPredictor, load_rows

    rows = load_rows(args.data)
    started = time.perf_counter()
    predictor = QualityPredictor.train(rows, l2=args.l2, steps=args.steps)
    predictor.save(args.out)
    elapsed = time.perf_counter() - started
    print(f"trained on {len(rows)} prompts x {len(predictor.models)} models in {elapsed:.1f} s -> {args.out}")
    return 0


def _print_eval(result: dict[str, object], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
        return
    ratios = result["accuracy_at_cost_ratio"]
    print(
        f"reference {result['reference']}: accuracy {result['reference_accuracy']:.4f}, cost ${result['reference_cost_usd']:.6f}"
    )
    print(f"rows evaluated       {result['rows']}")
    print(f"match reference at   {result['cost_ratio_to_match_reference']} of its cost")
    print(f"accuracy at 10/25/50% of its cost: {ratios}")
    print(f"AIQ                  {result['aiq']:.4f}")
    print(f"decision ms p50/p99  {result['decision_ms_p50']:.3f} / {result['decision_ms_p99']:.3f}")
    baselines = result["baselines"]
    assert isinstance(baselines, dict)
    for name in ("tfidf_knn", "best_model_per_task"):
        if name in baselines:
            b = baselines[name]
            print(
                f"baseline {name:<20} match {b['cost_ratio_to_match_reference']}, at ratios {b['accuracy_at_cost_ratio']}, AIQ {b['aiq']:.4f}"
            )
    print(f"oracle               {baselines['oracle']}")


def _cmd_router_eval(args: argparse.Namespace) -> int:
    from payrouter.routing.evaluate import evaluate, task_best_scorer, tfidf_knn_scorer
    from payrouter.routing.predictor import QualityPredictor, load_rows

    predictor = QualityPredictor.load(args.router)
    rows = load_rows([args.data])
    extra = {}
    if args.train:
        train = load_rows(args.train)
        models = [m for m in predictor.models if m in rows[0].scores]
        extra = {"tfidf_knn": tfidf_knn_scorer(train, models), "best_model_per_task": task_best_scorer(train, models)}
    result = evaluate(predictor, rows, args.reference, extra)
    _print_eval(result, args.json)
    if args.plot:
        from payrouter.routing.plot import plot_curve

        plot_curve(result, args.plot)
    return 0


def _cmd_router_cv(args: argparse.Namespace) -> int:
    from payrouter.routing.evaluate import cross_validate
    from payrouter.routing.predictor import load_rows

    result = cross_validate(load_rows(args.data), args.reference, folds=args.folds, seed=args.seed)
    _print_eval(result, args.json)
    if args.plot:
        from payrouter.routing.plot import plot_curve

        plot_curve(result, args.plot)
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
    address.add_argument("keystore")
    address.add_argument("--password-env", help="read the password from this environment variable")
    address.set_defaults(func=_cmd_keys_address)

    prices = sub.add_parser("prices", help="check price tables and price requests").add_subparsers(
        dest="prices_command", required=True
    )
    check = prices.add_parser("check", help="validate a price table")
    check.add_argument("table")
    check.set_defaults(func=_cmd_prices_check)
    quote = prices.add_parser("quote", help="price one route or one chat request")
    quote.add_argument("table")
    quote.add_argument("--model", help="catalog id (default: the request's model, else default_model)")
    quote.add_argument("--input-tokens", type=int, default=0)
    quote.add_argument("--output-tokens", type=int, default=256)
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
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8402, help="router port (0 picks a free one)")
    dev.add_argument("--agents", type=int, default=3, help="funded agent accounts to create")
    dev.add_argument("--table", help="price table (default: examples/prices.toml)")
    dev.add_argument("--redis-url", help="share state through Redis instead of memory")
    dev.set_defaults(func=_cmd_dev)

    router = sub.add_parser("router", help="train and evaluate the learned router").add_subparsers(
        dest="router_command", required=True
    )
    train = router.add_parser("train", help="train a router file from RouterBench-format CSVs")
    train.add_argument("--data", action="append", required=True, help="training CSV (repeatable)")
    train.add_argument("--out", required=True, help="router file to write (.npz)")
    train.add_argument("--l2", type=float, default=DEFAULT_L2, help="L2 regularisation strength")
    train.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="optimiser steps")
    train.set_defaults(func=_cmd_router_train)
    evaluate = router.add_parser("eval", help="evaluate a router file on rows it was not trained on")
    evaluate.add_argument("--router", required=True)
    evaluate.add_argument("--data", required=True)
    evaluate.add_argument("--reference", required=True, help="model to compare with, e.g. gpt-4-1106-preview")
    evaluate.add_argument("--train", action="append", help="training CSV, to add the TF-IDF kNN and per-task baselines")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument("--plot", help="write the cost-quality curve as a PNG (needs matplotlib)")
    evaluate.set_defaults(func=_cmd_router_eval)
    cv = router.add_parser("cv", help="k-fold cross-validation by prompt, with both baselines")
    cv.add_argument("--data", action="append", required=True)
    cv.add_argument("--reference", required=True)
    cv.add_argument("--folds", type=int, default=5)
    cv.add_argument("--seed", type=int, default=0)
    cv.add_argument("--json", action="store_true")
    cv.add_argument("--plot")
    cv.set_defaults(func=_cmd_router_cv)

    add_agent_commands(sub)
    add_ledger_commands(sub)

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
