"""Offline evaluation of routers on RouterBench-format data: cost-quality curves and baselines.

Choosing model M for a row costs that row's ``M|cost_usd`` and scores its ``M|score``. A
router is a function from prompt text to per-model (predicted quality, predicted cost); its
curve comes from sweeping the willingness to pay λ in ``argmax(quality - λ * cost)``.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from payrouter.routing.features import extract_question
from payrouter.routing.predictor import QualityPredictor, RouterRow, prompt_id

__all__ = ["aiq", "cross_validate", "evaluate", "format_result", "summarise"]

# λ in quality per USD: 0 is "best quality at any price", large values "cheapest".
LAMBDAS = [0.0, *[float(x) for x in np.logspace(-1, 6, 211)]]
COST_RATIOS = ("0.1", "0.25", "0.5")

Scorer = Callable[[RouterRow], tuple[NDArray[np.float64], NDArray[np.float64]]]


def _matrices(rows: Sequence[RouterRow], models: list[str]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    scores = np.array([[r.scores.get(m, 0.0) for m in models] for r in rows])
    costs = np.array([[r.costs.get(m, 0.0) for m in models] for r in rows])
    return scores, costs


def _curve(
    quality: NDArray[np.float64],
    cost_pred: NDArray[np.float64],
    scores: NDArray[np.float64],
    costs: NDArray[np.float64],
) -> list[dict[str, float]]:
    idx = np.arange(len(scores))
    points = []
    for lam in LAMBDAS:
        choice = np.argmax(quality - lam * cost_pred, axis=1)
        points.append(
            {"param": lam, "accuracy": float(scores[idx, choice].mean()), "cost_usd": float(costs[idx, choice].mean())}
        )
    return points


def aiq(points: Sequence[dict[str, float]], cost_min: float, cost_max: float) -> float:
    """RouterBench's average improvement in quality.

    The non-decreasing upper convex hull of the points (mixing two routes reaches any point on
    the segment between them), extended flat to ``cost_max``, integrated over cost and divided
    by the cost range ``[cost_min, cost_max]``; below the router's cheapest point it counts 0.
    """
    pts = sorted((p["cost_usd"], p["accuracy"]) for p in points)
    hull: list[tuple[float, float]] = []
    for c, a in pts:
        if hull and a <= hull[-1][1]:
            continue  # dominated: costs more, scores no better
        while len(hull) >= 2:
            (c1, a1), (c2, a2) = hull[-2], hull[-1]
            if (a2 - a1) * (c - c1) <= (a - a1) * (c2 - c1):  # hull[-1] lies under the chord
                hull.pop()
            else:
                break
        hull.append((c, a))
    if not hull or cost_max <= cost_min:
        return 0.0
    if hull[-1][0] < cost_max:
        hull.append((cost_max, hull[-1][1]))
    area = 0.0
    for (c1, a1), (c2, a2) in zip(hull, hull[1:], strict=False):
        lo, hi = max(c1, cost_min), min(c2, cost_max)
        if hi > lo:
            slope = (a2 - a1) / (c2 - c1)
            area += (hi - lo) * (a1 + slope * ((lo + hi) / 2 - c1))
    return area / (cost_max - cost_min)


def summarise(
    points: list[dict[str, float]], ref_acc: float, ref_cost: float, cost_min: float, cost_max: float
) -> dict[str, Any]:
    """The headline numbers of a curve relative to the reference model."""
    matching = [p["cost_usd"] / ref_cost for p in points if p["accuracy"] >= ref_acc]
    at_ratio = {}
    for ratio in COST_RATIOS:
        within = [p["accuracy"] for p in points if p["cost_usd"] <= float(ratio) * ref_cost]
        at_ratio[ratio] = max(within) if within else None
    return {
        "cost_ratio_to_match_reference": min(matching) if matching else None,
        "accuracy_at_cost_ratio": at_ratio,
        "aiq": aiq(points, cost_min, cost_max),
    }


def _single_and_oracle(scores: NDArray[np.float64], costs: NDArray[np.float64], models: list[str]) -> dict[str, Any]:
    singles = {
        m: {"accuracy": float(scores[:, j].mean()), "cost_usd": float(costs[:, j].mean())} for j, m in enumerate(models)
    }
    # oracle: the cheapest correct model per prompt (the cheapest model when none is correct)
    masked = np.where(scores > 0, costs, np.inf)
    best = np.where(np.isfinite(masked.min(1)), masked.argmin(1), costs.argmin(1))
    idx = np.arange(len(scores))
    oracle = {"accuracy": float(scores[idx, best].mean()), "cost_usd": float(costs[idx, best].mean())}
    return {"single_models": singles, "oracle": oracle}


def _random_mixing(singles: dict[str, dict[str, float]], reference: str) -> list[dict[str, float]]:
    cheapest = min(singles, key=lambda m: singles[m]["cost_usd"])
    a, b = singles[cheapest], singles[reference]
    return [
        {
            "param": share,
            "accuracy": (1 - share) * a["accuracy"] + share * b["accuracy"],
            "cost_usd": (1 - share) * a["cost_usd"] + share * b["cost_usd"],
        }
        for share in [i / 10 for i in range(11)]
    ]


def _predictor_scorer(predictor: QualityPredictor, models: list[str]) -> Scorer:
    order = [predictor.index[m] for m in models]

    def score(row: RouterRow) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        quality, _ = predictor.predict(row.prompt)
        return quality[order], predictor.expected_cost(row.prompt)[order]

    return score


def _run(scorer: Scorer, rows: Sequence[RouterRow]) -> tuple[NDArray[np.float64], NDArray[np.float64], list[float]]:
    quality, cost, times = [], [], []
    for row in rows:
        start = time.perf_counter()
        q, c = scorer(row)
        times.append((time.perf_counter() - start) * 1000)
        quality.append(q)
        cost.append(c)
    return np.array(quality), np.array(cost), times


def evaluate(
    predictor: QualityPredictor,
    rows: Sequence[RouterRow],
    reference: str,
    extra_scorers: dict[str, Scorer] | None = None,
) -> dict[str, Any]:
    """Evaluate on the rows the predictor was not trained on.

    Raises:
        ValueError: no unseen rows, or the reference is not a model of the data.
    """
    unseen = [r for r in rows if prompt_id(r.prompt) not in predictor.train_ids]
    if not unseen:
        raise ValueError(
            "every row was used for training this router file: evaluate on rows held out of training "
            "(`payrouter router holdout` makes a train/hold-out pair)"
        )
    models = [m for m in predictor.models if m in unseen[0].scores]
    if reference not in models:
        raise ValueError(f"reference {reference!r} is not one of {models}")
    scores, costs = _matrices(unseen, models)
    quality, cost_pred, times = _run(_predictor_scorer(predictor, models), unseen)
    points = _curve(quality, cost_pred, scores, costs)
    base = _single_and_oracle(scores, costs, models)
    ref = base["single_models"][reference]
    singles_cost = [v["cost_usd"] for v in base["single_models"].values()]
    cost_min, cost_max = min(singles_cost), max(singles_cost)
    result: dict[str, Any] = {
        "reference": reference,
        "reference_accuracy": ref["accuracy"],
        "reference_cost_usd": ref["cost_usd"],
        "rows": len(unseen),
        **summarise(points, ref["accuracy"], ref["cost_usd"], cost_min, cost_max),
        "points": points,
        "baselines": {**base, "random_mixing": _random_mixing(base["single_models"], reference)},
        "decision_ms_p50": float(np.percentile(times, 50)),
        "decision_ms_p99": float(np.percentile(times, 99)),
    }
    for name, scorer in (extra_scorers or {}).items():
        q, c, _ = _run(scorer, unseen)
        curve = _curve(q, c, scores, costs)
        result["baselines"][name] = {
            **summarise(curve, ref["accuracy"], ref["cost_usd"], cost_min, cost_max),
            "points": curve,
        }
    return result


# ---- baselines that need the training rows -------------------------------------------------

_TOKEN = re.compile(r"[a-z0-9]+")


def tfidf_knn_scorer(train: Sequence[RouterRow], models: list[str], k: int = 20) -> Scorer:
    """Per-prompt nearest neighbours on TF-IDF of the question: mean score and cost of the k closest."""
    docs = [Counter(_TOKEN.findall(extract_question(r.prompt).lower())) for r in train]
    df: Counter[str] = Counter()
    for doc in docs:
        df.update(doc.keys())
    n = len(docs)
    idf = {t: math.log((1 + n) / (1 + c)) + 1 for t, c in df.items()}

    def vec(doc: Counter[str]) -> dict[str, float]:
        v = {t: (1 + math.log(c)) * idf.get(t, 0.0) for t, c in doc.items()}
        norm = math.sqrt(sum(x * x for x in v.values())) or 1.0
        return {t: x / norm for t, x in v.items()}

    vectors = [vec(d) for d in docs]
    postings: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for i, v in enumerate(vectors):
        for t, x in v.items():
            postings[t].append((i, x))
    scores, costs = _matrices(train, models)

    def score(row: RouterRow) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        q = vec(Counter(_TOKEN.findall(extract_question(row.prompt).lower())))
        sims: dict[int, float] = defaultdict(float)
        for t, x in q.items():
            for i, y in postings.get(t, ()):
                sims[i] += x * y
        top = sorted(sims, key=sims.__getitem__, reverse=True)[:k] or list(range(min(k, n)))
        return scores[top].mean(0), costs[top].mean(0)

    return score


def task_best_scorer(train: Sequence[RouterRow], models: list[str]) -> Scorer:
    """ "Best model per task": each task's mean score and cost per model (uses ``eval_name``)."""
    by_task: dict[str, list[RouterRow]] = defaultdict(list)
    for row in train:
        by_task[row.task].append(row)
    table = {t: tuple(m.mean(0) for m in _matrices(rs, models)) for t, rs in by_task.items()}
    overall = tuple(m.mean(0) for m in _matrices(train, models))

    def score(row: RouterRow) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        q, c = table.get(row.task, overall)
        return q, c

    return score


def cross_validate(
    rows: Sequence[RouterRow],
    reference: str,
    folds: int = 5,
    seed: int = 0,
    on_fold: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """k-fold by prompt: train on k-1 folds, evaluate on the held-out fold, pool all held-out rows.

    The pooled curve is computed from every row's out-of-fold predictions, for our router and
    for the TF-IDF nearest-neighbour and best-model-per-task baselines. ``on_fold(i)`` is
    called after fold ``i`` (0-based) is done, for progress reports.

    Raises:
        ValueError: fewer than 2 folds, more folds than rows, or the reference is not a model of the data.
    """
    if folds < 2:
        raise ValueError(f"folds must be >= 2 (got {folds}): each fold is held out once while the others train")
    if folds > len(rows):
        raise ValueError(f"folds must be at most the number of rows ({len(rows)}), got {folds}")
    if reference not in rows[0].scores:
        raise ValueError(f"reference {reference!r} is not one of {sorted(rows[0].scores)}")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    models = sorted(rows[0].scores)
    outs: dict[str, list[Any]] = defaultdict(list)
    held: list[RouterRow] = []
    times: list[float] = []
    for f in range(folds):
        test_idx = set(order[f::folds])
        train = [rows[i] for i in range(len(rows)) if i not in test_idx]
        test = [rows[i] for i in sorted(test_idx)]
        predictor = QualityPredictor.train(train)
        for name, scorer in (
            ("router", _predictor_scorer(predictor, models)),
            ("tfidf_knn", tfidf_knn_scorer(train, models)),
            ("best_model_per_task", task_best_scorer(train, models)),
        ):
            q, c, t = _run(scorer, test)
            outs[name].append((q, c))
            if name == "router":
                times += t
        held += test
        if on_fold is not None:
            on_fold(f)
    scores, costs = _matrices(held, models)
    base = _single_and_oracle(scores, costs, models)
    ref = base["single_models"][reference]
    singles_cost = [v["cost_usd"] for v in base["single_models"].values()]
    cost_min, cost_max = min(singles_cost), max(singles_cost)
    curves = {
        name: _curve(np.vstack([q for q, _ in parts]), np.vstack([c for _, c in parts]), scores, costs)
        for name, parts in outs.items()
    }
    result: dict[str, Any] = {
        "reference": reference,
        "reference_accuracy": ref["accuracy"],
        "reference_cost_usd": ref["cost_usd"],
        "rows": len(held),
        "folds": folds,
        **summarise(curves["router"], ref["accuracy"], ref["cost_usd"], cost_min, cost_max),
        "points": curves["router"],
        "baselines": {**base, "random_mixing": _random_mixing(base["single_models"], reference)},
        "decision_ms_p50": float(np.percentile(times, 50)),
        "decision_ms_p99": float(np.percentile(times, 99)),
    }
    for name in ("tfidf_knn", "best_model_per_task"):
        result["baselines"][name] = {
            **summarise(curves[name], ref["accuracy"], ref["cost_usd"], cost_min, cost_max),
            "points": curves[name],
        }
    return result


def _pct(value: float | None) -> str:
    return "never" if value is None else f"{value:.0%}"


def _acc(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_result(result: dict[str, Any]) -> str:
    """A `evaluate` or `cross_validate` result as a table for people (rounded; ``--json`` has it all)."""
    ref_cost = result["reference_cost_usd"]
    how = f"{result['folds']}-fold cross-validation" if "folds" in result else "held-out evaluation"
    lines = [
        f"{how} on {result['rows']} rows; reference {result['reference']}: "
        f"accuracy {result['reference_accuracy']:.3f} at ${ref_cost:.6f} a prompt",
        "",
        f"{'router':<22} {'accuracy at 10% / 25% / 50% of its cost':<42} {'cost to match':<14} AIQ",
    ]
    baselines = result["baselines"]
    rows = [("payrouter", result), *((n, baselines[n]) for n in ("tfidf_knn", "best_model_per_task") if n in baselines)]
    for name, r in rows:
        at = r["accuracy_at_cost_ratio"]
        accuracies = " / ".join(_acc(at.get(k)) for k in COST_RATIOS)
        match = _pct(r["cost_ratio_to_match_reference"])
        lines.append(f"{name:<22} {accuracies:<42} {match:<14} {r['aiq']:.3f}")
    oracle = baselines["oracle"]
    lines += [
        "",
        f"oracle (cheapest correct model): accuracy {oracle['accuracy']:.3f} at ${oracle['cost_usd']:.6f} "
        f"({_pct(oracle['cost_usd'] / ref_cost if ref_cost else None)} of the reference's cost)",
        f"decision time: p50 {result['decision_ms_p50']:.3f} ms, p99 {result['decision_ms_p99']:.3f} ms",
        "",
        f"{'single model':<36} {'accuracy':>8} {'$ a prompt':>11}",
    ]
    singles = baselines["single_models"]
    for model in sorted(singles, key=lambda m: singles[m]["cost_usd"]):
        lines.append(f"{model:<36} {singles[model]['accuracy']:>8.3f} {singles[model]['cost_usd']:>11.6f}")
    return "\n".join(lines)
