"""Does routing learn from its own traffic? A replay of the shared RouterBench slice.

Start from a router trained on a small share of the training prompts (``--seed-share``);
replay the rest as traffic. Each request is routed by the current router at the operator's
budget (``--share`` of GPT-4's cost per request: the price of quality λ is recalibrated on
recent traffic after each retrain), except ``--explore`` of the requests (chosen by a digest
of the prompt) which go to a uniformly drawn model; the answering model's recorded correctness
comes back as the payer's rating: one label per request, never the other models'. Every
``--every`` requests the router is retrained on the seed prompts plus every rating so far,
exactly as ``payrouter router train --feedback`` does (a rating is the prompt's hashed
features and format, what the service stores, not its text). After each retrain it is
evaluated on held-out prompts: accuracy at 10% and 25% of GPT-4's cost (upper hull of its
cost-quality curve). Lines for comparison: the seed router left alone, and a router trained
on every model's label for every replayed prompt (the full-information bound).

Two scenarios: "same models", and "new model": the seed router has never seen
``--new-model`` (its labels are removed from the seed prompts), which gets ``--trial`` of the
traffic on a canary split and is learned from its ratings alone.

    .venv/bin/python -m bench.online_learning --plot docs/online_learning.png   # ~2 min on 2 cores
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from payrouter.routing.default import DEFAULT_DATA
from payrouter.routing.evaluate import evaluate
from payrouter.routing.features import format_signature, prompt_features
from payrouter.routing.predictor import DEFAULT_STEPS, FeedbackRow, QualityPredictor, RouterRow, load_rows

REFERENCE = "gpt-4-1106-preview"
RATIOS = ("0.1", "0.25")
LAMBDAS = [0.0, *[float(x) for x in np.logspace(-1, 6, 85)]]


def _split(rows: list[RouterRow], holdout: float, seed_share: float, seed: int) -> tuple[list[RouterRow], ...]:
    order = list(rows)
    random.Random(seed).shuffle(order)
    n_hold = int(len(order) * holdout)
    held, rest = order[:n_hold], order[n_hold:]
    n_seed = max(20, int(len(rest) * seed_share))
    return held, rest[:n_seed], rest[n_seed:]


def _explores(prompt: str, share: float) -> int | None:
    """The arm index a canary-style split sends this prompt to, or None (routed as usual)."""
    digest = hashlib.sha256(prompt.encode()).digest()
    if int.from_bytes(digest[:8], "big") % 10_000 >= share * 10_000:
        return None
    return int.from_bytes(digest[8:16], "big")


def _hull_at(points: list[dict[str, float]], budget: float) -> float:
    """Accuracy reachable at average cost ``budget``: the upper concave hull of the curve's
    points (mixing two routes reaches any point between them), read at ``budget``."""
    pts = sorted((p["cost_usd"], p["accuracy"]) for p in points)
    hull: list[tuple[float, float]] = []
    for c, a in pts:
        if hull and a <= hull[-1][1]:
            continue
        while len(hull) >= 2 and (hull[-1][1] - hull[-2][1]) * (c - hull[-2][0]) <= (a - hull[-2][1]) * (
            hull[-1][0] - hull[-2][0]
        ):
            hull.pop()
        hull.append((c, a))
    if budget <= hull[0][0]:
        return hull[0][1] if budget == hull[0][0] else 0.0
    for (c1, a1), (c2, a2) in zip(hull, hull[1:], strict=False):
        if budget <= c2:
            return a1 + (a2 - a1) * (budget - c1) / (c2 - c1)
    return hull[-1][1]


def _score(predictor: QualityPredictor, held: list[RouterRow]) -> dict[str, Any]:
    result = evaluate(predictor, held, REFERENCE)
    ref_cost = result["reference_cost_usd"]
    return {"at": {r: _hull_at(result["points"], float(r) * ref_cost) for r in RATIOS}, "aiq": result["aiq"]}


def _mean(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The average of several replays' scores (same keys, numbers averaged)."""
    if isinstance(results[0], dict):
        return {k: _mean([r[k] for r in results]) for k in results[0]}
    return float(np.mean(results))  # type: ignore[return-value,unused-ignore]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Both scenarios, each replayed ``--repeats`` times (different shuffles) and averaged."""
    started = time.perf_counter()
    rows = load_rows([args.data])
    scenarios = {"same models": None, f"new model: {args.new_model}": args.new_model} if args.new_model else {}
    scenarios = scenarios or {"same models": None}
    out: dict[str, Any] = {"every": args.every, "explore": args.explore, "trial": args.trial, "share": args.share}
    out["repeats"] = args.repeats
    out["scenarios"] = {}
    for name, new_model in scenarios.items():
        sys.stderr.write(f"-- {name}\n")
        runs = [replay(args, rows, args.seed + i, new_model) for i in range(args.repeats)]
        n = min(len(r["checkpoints"]) for r in runs)
        out["scenarios"][name] = {
            **{k: runs[0][k] for k in ("seed_prompts", "replayed", "held_out")},
            "static": _mean([r["static"] for r in runs]),
            "full_information": None if args.no_full else _mean([r["full_information"] for r in runs]),
            "checkpoints": [_mean([r["checkpoints"][i] for r in runs]) for i in range(n)],
            "runs": runs,
        }
    out["seconds"] = time.perf_counter() - started
    return out


def _without(row: RouterRow, model: str) -> RouterRow:
    drop = lambda d: {k: v for k, v in d.items() if k != model}  # noqa: E731
    return RouterRow(row.prompt, row.task, drop(row.scores), drop(row.costs), drop(row.response_chars))


def _priced(predictor: QualityPredictor, prices: QualityPredictor) -> QualityPredictor:
    """``predictor`` with the cost estimates of ``prices`` (matched by model name)."""
    order = [prices.index[m] for m in predictor.models]
    meta = prices.meta
    predictor.meta["cost_per_char"] = [meta["cost_per_char"][j] for j in order]
    predictor.meta["cost_base"] = [meta["cost_base"][j] for j in order]
    predictor.meta["format_costs"] = {sig: [c[j] for j in order] for sig, c in meta["format_costs"].items()}
    return predictor


def replay(args: argparse.Namespace, rows: list[RouterRow], seed: int, new_model: str | None) -> dict[str, Any]:
    """One replay of the traffic in the order ``seed`` shuffles it. With ``new_model``, the seed
    router has never seen that model: it is served only on a ``--trial`` split at first and
    learned from its ratings alone."""
    started = time.perf_counter()
    held, seed_rows, stream = _split(rows, args.holdout, args.seed_share, seed)
    models = sorted(rows[0].scores)
    # What a call costs is known from the price table in the service (the engine prices every
    # candidate); only quality is learned. So every router here gets the same cost estimates,
    # from the replayed prompts' recorded costs (steps=0: no weights are fitted).
    prices = QualityPredictor.train([*seed_rows, *stream], steps=0)
    everything = [*seed_rows, *stream]
    if new_model is not None:
        seed_rows = [_without(r, new_model) for r in seed_rows]

    def train(feedback: list[FeedbackRow], extra: list[RouterRow] | tuple[()] = ()) -> QualityPredictor:
        return _priced(QualityPredictor.train([*seed_rows, *extra], steps=args.steps, feedback=feedback), prices)

    budget = args.share * float(np.mean([r.costs[REFERENCE] for r in everything]))

    def calibrate(router: QualityPredictor, recent: list[RouterRow]) -> float:
        """The serving policy's price of quality: the smallest λ whose predicted mean cost on
        recent traffic fits the operator's budget (known prices; predicted quality)."""
        q = np.array([router.predict(r.prompt)[0] for r in recent])
        c = np.array([router.expected_cost(r.prompt) for r in recent])
        for lam in LAMBDAS:
            if c[np.arange(len(recent)), np.argmax(q - lam * c, axis=1)].mean() <= budget:
                return lam
        return LAMBDAS[-1]

    router = train([])
    lam = calibrate(router, seed_rows)
    static = _score(router, held)
    checkpoints: list[dict[str, Any]] = [{"seen": 0, **static, "served_accuracy": 0.0, "served_cost_usd": 0.0}]
    full_final: dict[str, Any] | None = None
    feedback: list[FeedbackRow] = []
    served_correct = served_cost = 0.0
    log = sys.stderr
    log.write(f"{len(seed_rows)} seed prompts, {len(stream)} replayed, {len(held)} held out\n")
    for i, row in enumerate(stream, start=1):
        arm = _explores(row.prompt, args.explore)
        if new_model is not None and _explores("trial " + row.prompt, args.trial) is not None:
            model = new_model  # the canary split: its share goes to the model under trial
        elif arm is not None:
            model = models[arm % len(models)]
        else:
            quality, _ = router.predict(row.prompt)
            cost = router.expected_cost(row.prompt)
            model = router.models[int(np.argmax(quality - lam * cost))]
        served_correct += row.scores[model]
        served_cost += row.costs[model]
        feedback.append(
            FeedbackRow(prompt_features(row.prompt), format_signature(row.prompt), model, row.scores[model])
        )
        if i % args.every == 0 or (i == len(stream) and i % args.every > args.every // 2):
            router = train(feedback)
            lam = calibrate(router, stream[max(0, i - args.every) : i])
            point = {
                "seen": i,
                **_score(router, held),
                "served_accuracy": served_correct / i,
                "served_cost_usd": served_cost / i,
            }
            checkpoints.append(point)
            log.write(
                f"{i:>5} requests: held-out accuracy at 10%/25% of GPT-4's cost "
                f"{point['at']['0.1']:.3f}/{point['at']['0.25']:.3f}, served accuracy {point['served_accuracy']:.3f} "
                f"({time.perf_counter() - started:.0f} s)\n"
            )
    if not args.no_full:
        full_final = _score(_priced(QualityPredictor.train(everything, steps=args.steps), prices), held)
    return {
        "seed_prompts": len(seed_rows),
        "replayed": len(stream),
        "held_out": len(held),
        "static": static,
        "full_information": full_final,
        "checkpoints": checkpoints,
        "seconds": time.perf_counter() - started,
    }


def plot(result: dict[str, Any], path: Path) -> None:
    """Accuracy at a fixed share of GPT-4's cost against requests seen, one panel per scenario."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = result["scenarios"]
    fig, axes = plt.subplots(1, len(scenarios), figsize=(7 * len(scenarios), 5), dpi=110, squeeze=False)
    for ax, (name, sc) in zip(axes[0], scenarios.items(), strict=True):
        seen = [c["seen"] for c in sc["checkpoints"]]
        for ratio, colour in zip(RATIOS, ("tab:blue", "tab:orange"), strict=True):
            share = f"{float(ratio):.0%}"
            ax.plot(
                seen, [c["at"][ratio] for c in sc["checkpoints"]], "o-", color=colour, label=f"learning loop, {share}"
            )
            ax.axhline(sc["static"]["at"][ratio], color=colour, ls=":", label=f"seed router alone, {share}")
            if sc["full_information"] is not None:
                full = sc["full_information"]["at"][ratio]
                ax.axhline(full, color=colour, ls="--", alpha=0.6, label=f"every label of every prompt, {share}")
        ax.set_xlabel("requests replayed, each rated by its payer")
        ax.set_ylabel("held-out accuracy at 10% / 25% of GPT-4's cost")
        ax.set_title(f"{name}: {sc['seed_prompts']} seed prompts, {sc['held_out']} held out", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(
        f"Routing that learns: retrained every {result['every']} requests (mean of {result['repeats']} replay orders)",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="RouterBench-format CSV (read-only)")
    parser.add_argument("--holdout", type=float, default=0.4, help="share of prompts held out for evaluation")
    parser.add_argument("--seed-share", type=float, default=0.03, help="share of the rest the first router sees")
    parser.add_argument("--every", type=int, default=300, help="retrain every N requests")
    parser.add_argument("--explore", type=float, default=0.2, help="share of traffic sent to a random model")
    parser.add_argument(
        "--share", type=float, default=0.1, help="the operator's budget: this share of GPT-4's cost per request"
    )
    parser.add_argument(
        "--new-model",
        default="zero-one-ai/Yi-34B-Chat",
        help="second scenario: the seed router has never seen this model ('' to skip)",
    )
    parser.add_argument("--trial", type=float, default=0.1, help="share of traffic the new model gets on trial")
    parser.add_argument(
        "--steps", type=int, default=100, help=f"optimiser steps per training (service: {DEFAULT_STEPS})"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="replays in different orders, averaged")
    parser.add_argument("--no-full", action="store_true", help="skip the full-information bound")
    parser.add_argument("--plot", type=Path, help="write the figure here (PNG; needs matplotlib)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = parser.parse_args()
    if not args.data.exists():
        print(f"error: no data at {args.data} (the shared RouterBench slice, ../shared/data)", file=sys.stderr)
        return 2
    result = run(args)
    if args.plot:
        plot(result, args.plot)
    if args.json:
        print(json.dumps(result))
    else:
        for name, sc in result["scenarios"].items():
            first, last = sc["checkpoints"][0], sc["checkpoints"][-1]
            print(f"{name}: seed router ({sc['seed_prompts']} prompts) at 10%/25% of GPT-4's cost: {first['at']}")
            print(
                f"  after {last['seen']:.0f} rated requests: {last['at']} (served accuracy {last['served_accuracy']:.3f})"
            )
            if sc["full_information"] is not None:
                print(f"  full-information bound: {sc['full_information']['at']}")
        print(f"took {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
