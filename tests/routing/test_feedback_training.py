"""payrouter router train --feedback: payer ratings from the request log move the predictor."""

from __future__ import annotations

import json
from pathlib import Path

from payrouter.cli import main
from payrouter.routing.features import format_signature, prompt_features
from payrouter.routing.predictor import FeedbackRow, QualityPredictor, load_feedback, load_rows

from . import synthetic

EASY = "A simple question about seeds (77)?\nA) yes\nB) no\nAnswer:"


def _log(path: Path, n: int, rating: str) -> Path:
    events: list[dict[str, object]] = [{"event": "call", "request_id": "x", "model": "m"}]  # skipped
    for i in range(n):
        prompt = f"A simple question about rivers ({1000 + i})?\nA) yes\nB) no\nAnswer:"
        events.append(
            {
                "event": "feedback",
                "request_id": f"chatcmpl-{i}",
                "payer": "0x0",
                "model": "cheap",
                "router_name": "weak",
                "arm": "",
                "rating": rating,
                "features": prompt_features(prompt),
                "format": format_signature(prompt),
            }
        )
    path.write_text("\n".join(json.dumps(e) for e in events) + "\nnot json\n")
    return path


def test_ratings_from_the_log_are_folded_into_the_router(tmp_path: Path) -> None:
    data = synthetic.write(tmp_path / "train.csv", 200, seed=5)
    log = _log(tmp_path / "requests.jsonl", 150, "bad")
    assert len(load_feedback([log])) == 150
    assert main(["router", "train", "--data", str(data), "--out", str(tmp_path / "plain.npz")]) == 0
    code = main(["router", "train", "--data", str(data), "--feedback", str(log), "--out", str(tmp_path / "fed.npz")])
    assert code == 0
    plain, fed = QualityPredictor.load(tmp_path / "plain.npz"), QualityPredictor.load(tmp_path / "fed.npz")
    assert fed.meta["feedback_rows"] == 150 and "feedback_rows" not in plain.meta
    weak = plain.index["weak"]
    before, after = plain.predict(EASY)[0], fed.predict(EASY)[0]
    # the payers said "weak" got easy questions wrong: it is now trusted less with them, and only it
    assert after[weak] < before[weak] - 0.2
    others = [i for i in range(len(plain.models)) if i != weak]
    assert abs(after[others] - before[others]).max() < 0.05


def test_a_model_only_ratings_know_is_learned_from_them(tmp_path: Path) -> None:
    rows = load_rows([synthetic.write(tmp_path / "train.csv", 120, seed=6)])
    feedback = [
        FeedbackRow(prompt_features(p), format_signature(p), "newbie", 1.0 if "simple" in p else 0.0)
        for p in (
            f"A {w} question about stars ({2000 + i})?\nA) yes\nB) no\nAnswer:"
            for i in range(120)
            for w in ("simple", "intricate multi-step")
        )
    ]
    predictor = QualityPredictor.train(rows, feedback=feedback)
    assert "newbie" in predictor.models and set(rows[0].scores) < set(predictor.models)
    quality, tokens = predictor.predict(EASY)
    hard = EASY.replace("simple", "intricate multi-step")
    newbie = predictor.index["newbie"]
    assert quality[newbie] > 0.8 and predictor.predict(hard)[0][newbie] < 0.3
    assert tokens[newbie] >= 1  # an answer budget from the other models' lengths
