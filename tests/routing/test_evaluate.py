"""Offline evaluation: AIQ, curves, baselines, and the router CLI end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from payrouter.routing.evaluate import aiq, summarise

from . import synthetic

CLI = Path(sys.executable).parent / "payrouter"


def test_aiq_of_known_curves() -> None:
    # a flat curve at 0.8 over the whole range has AIQ 0.8
    assert aiq([{"cost_usd": 1.0, "accuracy": 0.8}], 1.0, 3.0) == pytest.approx(0.8)
    # a line from (1, 0.5) to (3, 0.9): mean 0.7; a dominated point changes nothing
    pts = [{"cost_usd": 1.0, "accuracy": 0.5}, {"cost_usd": 3.0, "accuracy": 0.9}, {"cost_usd": 2.0, "accuracy": 0.6}]
    assert aiq(pts, 1.0, 3.0) == pytest.approx(0.7)
    # a point above the chord lifts the hull: (1,.5) (2,.85) (3,.9) -> (0.675 + 0.875) / 2
    pts[2] = {"cost_usd": 2.0, "accuracy": 0.85}
    assert aiq(pts, 1.0, 3.0) == pytest.approx((0.675 + 0.875) / 2)
    # nothing below the router's cheapest point
    assert aiq([{"cost_usd": 2.0, "accuracy": 1.0}], 1.0, 3.0) == pytest.approx(0.5)


def test_summary_fields() -> None:
    pts = [{"param": 0.0, "accuracy": 0.9, "cost_usd": 10.0}, {"param": 1.0, "accuracy": 0.85, "cost_usd": 2.0}]
    s = summarise(pts, ref_acc=0.88, ref_cost=10.0, cost_min=1.0, cost_max=10.0)
    assert s["cost_ratio_to_match_reference"] == 1.0
    assert s["accuracy_at_cost_ratio"] == {"0.1": None, "0.25": 0.85, "0.5": 0.85}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=300, env=os.environ.copy())


def test_router_cli_train_eval_cv(tmp_path: Path) -> None:
    train = synthetic.write(tmp_path / "train.csv", 240, seed=1)
    test = synthetic.write(tmp_path / "test.csv", 120, seed=2)
    out = tmp_path / "router.npz"
    trained = run("router", "train", "--data", str(train), "--out", str(out))
    assert trained.returncode == 0, trained.stderr
    assert "trained on 240 prompts x 3 models" in trained.stdout
    evaluated = run(
        "router", "eval", "--router", str(out), "--data", str(test), "--reference", "strong",
        "--train", str(train), "--json", "--plot", str(tmp_path / "curve.png"),
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(evaluated.stdout)
    for key in (
        "reference", "reference_accuracy", "reference_cost_usd", "cost_ratio_to_match_reference",
        "accuracy_at_cost_ratio", "aiq", "points", "baselines", "decision_ms_p50", "decision_ms_p99",
    ):  # fmt: skip
        assert key in result
    assert result["reference_accuracy"] == 1.0
    # the structure is learnable: match "strong" at a fraction of its cost
    assert result["cost_ratio_to_match_reference"] is not None and result["cost_ratio_to_match_reference"] < 0.5
    assert set(result["accuracy_at_cost_ratio"]) == {"0.1", "0.25", "0.5"}
    baselines = result["baselines"]
    assert {"single_models", "oracle", "random_mixing", "tfidf_knn", "best_model_per_task"} <= set(baselines)
    assert baselines["oracle"]["accuracy"] == 1.0
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"

    # rows it was trained on are not evaluated
    same = run("router", "eval", "--router", str(out), "--data", str(train), "--reference", "strong")
    assert same.returncode == 2 and "every row was used for training" in same.stderr

    cv = run("router", "cv", "--data", str(train), "--reference", "strong", "--folds", "3", "--json")
    assert cv.returncode == 0, cv.stderr
    cross = json.loads(cv.stdout)
    assert cross["rows"] == 240 and cross["folds"] == 3
    assert cross["aiq"] >= cross["baselines"]["tfidf_knn"]["aiq"] - 0.05


def test_bad_training_data_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("question,answer\nhi,there\n")
    result = run("router", "train", "--data", str(bad), "--out", str(tmp_path / "r.npz"))
    assert result.returncode == 2 and "needs a 'prompt' column" in result.stderr
