"""A small synthetic routing data set with a learnable structure.

"weak" answers "easy" prompts correctly and fails "hard" ones; "strong" answers both; "mid"
gets everything but code right. Costs are fixed per model, so the router's job is to learn
which prompts the cheap models can take.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

MODELS = {"weak": 0.0001, "mid": 0.001, "strong": 0.01}
TOPICS = ["rivers", "stars", "plants", "metals", "clouds", "magnets", "volcanoes", "bridges", "tides", "seeds"]


def rows(n: int, seed: int) -> list[dict[str, str]]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        kind = rnd.choice(["easy", "hard", "code"])
        topic = rnd.choice(TOPICS)
        if kind == "code":
            prompt = f"Write a python function that sorts {topic} number {i}."
        else:
            word = "simple" if kind == "easy" else "intricate multi-step"
            prompt = f"A {word} question about {topic} ({i})?\nA) yes\nB) no\nAnswer:"
        correct = {"weak": kind == "easy", "mid": kind != "code", "strong": True}
        row = {"sample_id": str(i), "eval_name": kind, "prompt": prompt}
        for model, cost in MODELS.items():
            row[f"{model}|score"] = "1.0" if correct[model] else "0.0"
            row[f"{model}|cost_usd"] = str(cost)
            row[f"{model}|response_chars"] = "1" if kind != "code" else "400"
        out.append(row)
    return out


def write(path: Path, n: int, seed: int) -> Path:
    data = rows(n, seed)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(data[0]))
        writer.writeheader()
        writer.writerows(data)
    return path
