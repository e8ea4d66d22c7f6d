"""Where the routing data's oracle gap comes from, and how much of it prompt text can reach.

Usage: .venv/bin/python bench/routing_ceiling.py --data CSV [--folds 5]

--data is routing data in the RouterBench format (README, "Routing data"; e.g.
../shared/data/routerbench/train.csv where that exists).

Prints, per task:
1. out-of-fold AUC of the shipped predictor's P(correct) for every model, *within* the task
   (0.5 = the text tells nothing beyond the task's base rate);
2. for two-choice tasks, a two-class latent model of the 11 correctness bits (EM): if models
   answer mostly one letter, the classes are the gold letter and per-class accuracies show it;
3. the accuracy and cost a router would reach if it knew each such prompt's class (i.e. the
   answer letter) and otherwise sent every prompt to its task's best cheap model;
4. how many of those prompts have a near-identical twin in the data (Winogrande's twin
   sentences swap one word and flip the answer) - a leak, not a signal a real router has.
"""

from __future__ import annotations

import argparse
import difflib
import random
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from payrouter.routing.data import DATA_HELP, RoutingDataError, read_routing_data
from payrouter.routing.features import extract_question
from payrouter.routing.predictor import QualityPredictor, RouterRow

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = "gpt-4-1106-preview"
_OPTION = re.compile(r"^[A-H]\) (.*)$", re.MULTILINE)


def auc(pred: NDArray[np.float64], target: NDArray[np.float64]) -> float:
    """Area under the ROC curve by average ranks (ties share a rank)."""
    pos = target > 0.5
    if pos.all() or not pos.any():
        return float("nan")
    order = np.argsort(pred, kind="mergesort")
    ranks = np.empty(len(pred))
    sorted_pred = pred[order]
    i = 0
    while i < len(pred):
        j = i
        while j + 1 < len(pred) and sorted_pred[j + 1] == sorted_pred[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def out_of_fold(rows: list[RouterRow], models: list[str], folds: int) -> NDArray[np.float64]:
    """P(correct) per row and model from predictors that never saw the row."""
    order = list(range(len(rows)))
    random.Random(0).shuffle(order)
    pred = np.zeros((len(rows), len(models)))
    for f in range(folds):
        held = set(order[f::folds])
        predictor = QualityPredictor.train([rows[i] for i in range(len(rows)) if i not in held])
        cols = [predictor.index[m] for m in models]
        for i in held:
            pred[i] = predictor.predict(rows[i].prompt)[0][cols]
    return pred


def two_classes(scores: NDArray[np.float64], iterations: int = 300) -> tuple[NDArray[np.float64], ...]:
    """EM for a two-class mixture of independent Bernoullis: (P(class 1) per row, acc1, acc0)."""
    resp = np.random.default_rng(0).random(len(scores))
    for _ in range(iterations):
        acc1 = np.clip((resp[:, None] * scores).sum(0) / resp.sum(), 0.01, 0.99)
        acc0 = np.clip(((1 - resp)[:, None] * scores).sum(0) / (1 - resp).sum(), 0.01, 0.99)
        share = float(np.clip(resp.mean(), 0.01, 0.99))
        log1 = np.log(share) + (scores * np.log(acc1) + (1 - scores) * np.log(1 - acc1)).sum(1)
        log0 = np.log(1 - share) + (scores * np.log(acc0) + (1 - scores) * np.log(1 - acc0)).sum(1)
        resp = 1 / (1 + np.exp(np.clip(log0 - log1, -50, 50)))
    return resp, acc1, acc0


def twins(rows: list[RouterRow]) -> list[tuple[int, int, bool]]:
    """Pairs (i, j, same option order) of prompts with the same options and >=80% the same sentence."""
    by_options: dict[tuple[str, ...], list[int]] = defaultdict(list)
    questions = [extract_question(row.prompt) for row in rows]
    for i, question in enumerate(questions):
        by_options[tuple(sorted(_OPTION.findall(question)))].append(i)
    pairs = []
    for members in by_options.values():
        for a, i in enumerate(members):
            for j in members[a + 1 :]:
                si, sj = questions[i].split("\nA)"), questions[j].split("\nA)")
                if difflib.SequenceMatcher(None, si[0], sj[0]).ratio() >= 0.8:
                    pairs.append((i, j, si[1:] == sj[1:]))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description="Where the routing data's oracle gap comes from.")
    parser.add_argument("--data", required=True, help=f"routing data, {DATA_HELP}")
    parser.add_argument("--folds", type=int, default=5, help="folds of the out-of-fold predictions (default 5)")
    args = parser.parse_args()
    try:
        rows = read_routing_data([args.data])
    except RoutingDataError as exc:
        parser.exit(2, f"error: {exc}\n")
    models = sorted(rows[0].scores)
    scores = np.array([[r.scores[m] for m in models] for r in rows])
    costs = np.array([[r.costs[m] for m in models] for r in rows])
    tasks = np.array([r.task for r in rows])
    ref = models.index(REFERENCE)
    ref_cost = costs[:, ref].mean()
    pred = out_of_fold(rows, models, args.folds)
    print(f"{len(rows)} prompts; {REFERENCE}: accuracy {scores[:, ref].mean():.4f}, ${ref_cost:.6f} a prompt\n")

    # the baseline a letter-aware router would improve on: each task's most accurate model
    # among those costing at most 10% of the reference
    choice_acc = np.zeros(len(rows))
    choice_cost = np.zeros(len(rows))
    for task in sorted(set(tasks)):
        mask = tasks == task
        s, c = scores[mask], costs[mask]
        cheap = [j for j in range(len(models)) if c[:, j].mean() <= 0.1 * ref_cost]
        best = max(cheap, key=lambda j: s[:, j].mean())
        choice_acc[mask], choice_cost[mask] = s[:, best], c[:, best]
        print(f"== {task} ({mask.sum()} prompts); best model under 10% of the reference: {models[best]}")
        print(f"   {'model':<36}{'accuracy':>9}{'cost/ref':>9}{'text AUC':>9}")
        for j, m in enumerate(models):
            print(
                f"   {m:<36}{s[:, j].mean():>9.3f}{c[:, j].mean() / ref_cost:>9.3f}{auc(pred[mask, j], s[:, j]):>9.3f}"
            )
        options = {len(_OPTION.findall(extract_question(r.prompt))) for r, keep in zip(rows, mask, strict=True) if keep}
        if options != {2}:
            continue
        resp, acc1, acc0 = two_classes(s)
        sure = ((resp > 0.9) | (resp < 0.1)).mean()
        print(f"   two-class latent model: {sure:.1%} of prompts assigned with >90% certainty")
        print(f"   {'model':<36}{'class 1':>9}{'class 0':>9}")
        for j, m in enumerate(models):
            print(f"   {m:<36}{acc1[j]:>9.3f}{acc0[j]:>9.3f}")
        cls = resp > 0.5
        for flag in (True, False):
            part = cls == flag
            # the cheapest model at least 95% right on this class
            good = [j for j in range(len(models)) if s[part, j].mean() >= 0.95] or [int(s[part].mean(0).argmax())]
            j = min(good, key=lambda k: c[part, k].mean())
            idx = np.flatnonzero(mask)[part]
            choice_acc[idx], choice_cost[idx] = scores[idx, j], costs[idx, j]
        pairs = twins([r for r, keep in zip(rows, mask, strict=True) if keep])
        paired = len({i for i, _, _ in pairs} | {j for _, j, _ in pairs})
        # twins flip the answer: same option order -> the other class, swapped order -> the same
        agree = sum((cls[i] != cls[j]) == same for i, j, same in pairs)
        print(
            f"   prompts with a twin in the data: {paired} of {mask.sum()}; "
            f"the twin's class gives this prompt's class in {agree} of {len(pairs)} pairs"
        )
    print(
        "\nknowing the answer letter of two-choice prompts (best cheap model elsewhere): "
        f"accuracy {choice_acc.mean():.4f} at {choice_cost.mean() / ref_cost:.3f} of the reference's cost"
    )


if __name__ == "__main__":
    main()
