"""Routing-decision latency of the default engine, feature extraction included.

Usage: .venv/bin/python bench/routing.py --data CSV [--router FILE] [--n 2000]

--data is routing data in the RouterBench format (README, "Routing data"; e.g.
../shared/data/routerbench/train.csv where that exists). Without --router it trains a
predictor on it first. Then it times `RoutingEngine.decide` (prompt text -> features -> predicted quality
and length per model -> constraints -> pricing of every candidate -> strategy) on the
example price table for --n prompts from the data, and the predictor alone.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from bench.timing import percentile
from payrouter.chat import ChatRequest
from payrouter.routing import RoutingEngine
from payrouter.routing.data import DATA_HELP, RoutingDataError, read_routing_data
from payrouter.routing.predictor import QualityPredictor
from pricing import estimate_chat_input_tokens, load_price_table

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description="Routing-decision latency of the default engine.")
    parser.add_argument("--router", help="a router file (default: train one on --data first)")
    parser.add_argument("--data", required=True, help=f"routing data, {DATA_HELP}")
    parser.add_argument("--n", type=int, default=2000, help="prompts to time (default 2000)")
    args = parser.parse_args()
    try:
        rows = read_routing_data([args.data])
    except RoutingDataError as exc:
        parser.exit(2, f"error: {exc}\n")
    if args.router:
        predictor = QualityPredictor.load(args.router)
    else:
        started = time.perf_counter()
        predictor = QualityPredictor.train(rows)
        print(f"trained on {len(rows)} prompts in {time.perf_counter() - started:.1f} s")
    table = load_price_table(ROOT / "examples" / "prices.toml")
    engine = RoutingEngine(predictor)
    prompts = [r.prompt for r in rows][: args.n]
    requests = [
        ChatRequest.model_validate({"model": "auto", "messages": [{"role": "user", "content": p}]}) for p in prompts
    ]
    # a named model still gets fallbacks: every other model that is at least as good, priced
    named = [r.model_copy(update={"model": table.models[0].id}) for r in requests]
    for request in requests[:50] + named[:50]:  # warm-up
        engine.decide(request, 100, table)
    decide_ms, named_ms, predict_ms = [], [], []
    for request, by_name, prompt in zip(requests, named, prompts, strict=True):
        tokens = estimate_chat_input_tokens([{"role": "user", "content": prompt}])
        start = time.perf_counter()
        engine.decide(request, tokens, table)
        decide_ms.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        engine.decide(by_name, tokens, table)
        named_ms.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        predictor.predict(prompt)
        predict_ms.append((time.perf_counter() - start) * 1000)
    for name, values in (
        (f"decide (auto, {len(table.models)} models)", decide_ms),
        ("decide (named + fallbacks)", named_ms),
        ("predict (features + model)", predict_ms),
    ):
        print(
            f"{name:<28} p50 {statistics.median(values):.3f} ms  p99 {percentile(values, 0.99):.3f} ms  "
            f"max {max(values):.3f} ms  (n={len(values)})"
        )


if __name__ == "__main__":
    main()
