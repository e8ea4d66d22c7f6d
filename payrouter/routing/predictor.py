"""The learned quality predictor: P(model answers correctly | prompt), and output length.

One L2-regularised logistic regression per model over hashed prompt features, trained
jointly with Adam on the full batch, plus a per-model regression of the log answer length
(for the output budget). Trained from CSV files in the RouterBench format; saved as one
``.npz`` file. Inference is a gather-and-sum over the prompt's active features: tens of µs.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from payrouter.routing.features import FEATURE_BITS, features_and_signature, format_signature, prompt_features

__all__ = [
    "DEFAULT_L2",
    "DEFAULT_STEPS",
    "FeedbackRow",
    "QualityPredictor",
    "RouterRow",
    "load_feedback",
    "load_rows",
    "prompt_id",
]

CHARS_PER_TOKEN = 4
PRIOR_STRENGTH = 5.0  # pseudo-prompts pulling a rare format's base rate toward the overall rate
# chosen by 5-fold cross-validation on the shared RouterBench slice (see the closing notes)
DEFAULT_L2 = 3e-2
DEFAULT_STEPS = 200


def prompt_id(prompt: str) -> str:
    """A stable id of a prompt's text (to tell training rows from unseen ones)."""
    return hashlib.sha256(prompt.encode()).hexdigest()[:20]


@dataclass(frozen=True, slots=True)
class FeedbackRow:
    """A served call its payer rated: the prompt's features, the model that answered (its
    training name) and the rating as a score (1 good, 0 bad)."""

    features: list[int]
    format: str
    model: str
    score: float


def load_feedback(paths: Iterable[str | Path]) -> list[FeedbackRow]:
    """The ``feedback`` events of request logs (JSON lines; other events and lines are skipped).

    Raises:
        OSError: a file cannot be read.
    """
    out: list[FeedbackRow] = []
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(event, dict) or event.get("event") != "feedback":
                    continue
                features, model = event.get("features"), event.get("router_name")
                if not isinstance(features, list) or not model or event.get("rating") not in ("good", "bad"):
                    continue
                limit = 1 << FEATURE_BITS
                if not all(isinstance(x, int) and 0 <= x < limit for x in features):
                    continue
                score = 1.0 if event["rating"] == "good" else 0.0
                out.append(FeedbackRow(features, str(event.get("format", "")), str(model), score))
    return out


@dataclass(frozen=True, slots=True)
class RouterRow:
    """One prompt of a routing data set: its text, task, and per-model score, cost and answer length."""

    prompt: str
    task: str
    scores: dict[str, float]
    costs: dict[str, float]
    response_chars: dict[str, float] = field(default_factory=dict)


def load_rows(paths: Iterable[str | Path]) -> list[RouterRow]:
    """Read RouterBench-format CSVs: ``prompt``, ``eval_name`` and ``M|score``, ``M|cost_usd``,
    ``M|response_chars`` per model. Missing numbers count as 0.

    Raises:
        ValueError: a file lacks the ``prompt`` column or any ``M|score`` column.
    """
    rows: list[RouterRow] = []
    csv.field_size_limit(1 << 26)
    for path in paths:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            models = [c[: -len("|score")] for c in columns if c.endswith("|score")]
            if "prompt" not in columns or not models:
                raise ValueError(f"{path}: needs a 'prompt' column and 'MODEL|score' columns")
            for raw in reader:

                def num(key: str, raw: dict[str, str] = raw) -> float:
                    value = raw.get(key) or ""
                    try:
                        return float(value) if value else 0.0
                    except ValueError:
                        return 0.0

                rows.append(
                    RouterRow(
                        prompt=raw["prompt"],
                        task=raw.get("eval_name", ""),
                        scores={m: num(f"{m}|score") for m in models},
                        costs={m: num(f"{m}|cost_usd") for m in models},
                        response_chars={m: num(f"{m}|response_chars") for m in models},
                    )
                )
    return rows


def _sparse(rows: Sequence[str]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Row-major (row index, feature index) pairs of the prompts' active features."""
    row_idx: list[int] = []
    col_idx: list[int] = []
    for i, text in enumerate(rows):
        feats = prompt_features(text)
        row_idx += [i] * len(feats)
        col_idx += feats
    return np.asarray(row_idx, dtype=np.int64), np.asarray(col_idx, dtype=np.int64)


def _fit(
    rows: NDArray[np.int64],
    cols: NDArray[np.int64],
    n: int,
    targets: NDArray[np.float64],
    logistic: bool,
    l2: float,
    offset: NDArray[np.float64] | None = None,
    steps: int = 200,
    lr: float = 0.1,
    mask: NDArray[np.float64] | None = None,
) -> NDArray[np.float32]:
    """Full-batch Adam on mean loss + l2 * |W|^2 over the used features only; ``mask`` (rows x
    models, 0 or 1) leaves out the targets a row does not have."""
    used, local = np.unique(cols, return_inverse=True)
    k = targets.shape[1]
    w = np.zeros((len(used), k))
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    z = np.empty((n, k))
    grad = np.empty_like(w)
    for step in range(1, steps + 1):
        # sparse products by bincount: X @ W and X.T @ err, one model column at a time
        for j in range(k):
            z[:, j] = np.bincount(rows, weights=w[local, j], minlength=n)
        if offset is not None:
            z += offset
        pred = 1.0 / (1.0 + np.exp(-z)) if logistic else z
        err = (pred - targets) / n if mask is None else (pred - targets) * mask / n
        for j in range(k):
            grad[:, j] = np.bincount(local, weights=err[rows, j], minlength=len(used))
        grad += 2 * l2 * w
        m = 0.9 * m + 0.1 * grad
        v = 0.999 * v + 0.001 * grad * grad
        w -= lr * (m / (1 - 0.9**step)) / (np.sqrt(v / (1 - 0.999**step)) + 1e-8)
    full = np.zeros((1 << FEATURE_BITS, k), dtype=np.float32)
    full[used] = w
    return full


def _log_odds(p: Sequence[float]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    # kept as (log p, log(1 - p)) and applied in that order: predictions stay bit-identical
    prior = np.asarray(p, dtype=np.float64)
    return np.log(prior), np.log1p(-prior)


class QualityPredictor:
    """Predicts, for a prompt, each known model's chance of a correct answer and its answer length.

    Attributes:
        models: the model names of the training data, in column order.
        train_ids: `prompt_id` of every training prompt (an evaluation skips them).
    """

    def __init__(
        self,
        models: list[str],
        quality: NDArray[np.float32],
        length: NDArray[np.float32],
        length_margin: NDArray[np.float32],
        train_ids: set[str],
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.models = models
        k = len(models)
        # one gather over the feature rows serves both heads (quality logits, log answer length)
        self._weights = np.hstack([quality, length])
        self._quality = self._weights[:, :k]
        self._length = self._weights[:, k:]
        self._length_margin = length_margin
        self.train_ids = train_ids
        self.meta = meta or {}
        self.index = {name: i for i, name in enumerate(models)}
        self._priors: dict[str, list[float]] = self.meta.get("format_priors", {})
        self._overall: list[float] = self.meta.get("overall_prior", [0.5] * len(models))
        self._prior_odds = {sig: _log_odds(p) for sig, p in self._priors.items()}
        self._overall_odds = _log_odds(self._overall)

    @classmethod
    def train(
        cls,
        rows: Sequence[RouterRow],
        l2: float = DEFAULT_L2,
        steps: int = DEFAULT_STEPS,
        feedback: Sequence[FeedbackRow] = (),
    ) -> QualityPredictor:
        """Fit on ``rows`` (every row must have the same models), plus ``feedback``: served
        calls rated by their payers, each a label for the one model that answered. A model
        only the feedback knows (one under trial) is learned from its ratings alone; its answer
        length and cost are taken as the median of the other models'.

        Raises:
            ValueError: no rows, or rows with different model sets.
        """
        if not rows:
            raise ValueError("no training rows")
        known = sorted(rows[0].scores)
        if any(sorted(r.scores) != known for r in rows):
            raise ValueError("every training row must score the same models")
        models = sorted(set(known) | {f.model for f in feedback})
        index = {m: j for j, m in enumerate(models)}
        fresh = [index[m] for m in models if m not in rows[0].scores]
        r_idx, c_idx = _sparse([r.prompt for r in rows])
        n = len(rows)
        scores = np.array([[r.scores.get(m, 0.0) for m in models] for r in rows])
        # Base rates per prompt format (smoothed toward the overall rate); the text model learns
        # only what moves a prompt away from its format's base rate.
        signatures = [format_signature(r.prompt) for r in rows]
        q_rows, q_cols, labelled, q_scores, q_signatures = r_idx, c_idx, None, scores, signatures
        if feedback:
            # a rated call is a row of its own with one known target: its model's
            f_rows = np.concatenate([np.full(len(f.features), n + i, dtype=np.int64) for i, f in enumerate(feedback)])
            f_cols = np.concatenate([np.asarray(f.features, dtype=np.int64) for f in feedback])
            q_rows, q_cols = np.concatenate([r_idx, f_rows]), np.concatenate([c_idx, f_cols])
            labelled = np.zeros((n + len(feedback), len(models)))
            labelled[:n] = 1.0
            labelled[:n, fresh] = 0.0
            q_scores = np.zeros_like(labelled)
            q_scores[:n] = scores
            for i, f in enumerate(feedback):
                labelled[n + i, index[f.model]] = 1.0
                q_scores[n + i, index[f.model]] = f.score
            q_signatures = signatures + [f.format for f in feedback]
        if labelled is None:
            overall = scores.mean(0)
        else:
            counts = labelled.sum(0)
            overall = np.where(counts > 0, q_scores.sum(0) / np.maximum(counts, 1.0), 0.5)
        priors: dict[str, list[float]] = {}
        for sig in sorted(set(q_signatures)):
            mask = np.array([s == sig for s in q_signatures])
            if labelled is None:
                rate = (scores[mask].sum(0) + PRIOR_STRENGTH * overall) / (mask.sum() + PRIOR_STRENGTH)
            else:
                rate = (q_scores[mask].sum(0) + PRIOR_STRENGTH * overall) / (labelled[mask].sum(0) + PRIOR_STRENGTH)
            priors[sig] = np.clip(rate, 0.01, 0.99).tolist()
        offset = np.log(np.array([priors[s] for s in q_signatures]))
        offset -= np.log1p(-np.array([priors[s] for s in q_signatures]))
        chars = np.array([[max(r.response_chars.get(m, 0.0), 1.0) for m in models] for r in rows])
        costs = np.array([[r.costs.get(m, 0.0) for m in models] for r in rows])
        if fresh:
            seen = [index[m] for m in known]
            chars[:, fresh] = np.median(chars[:, seen], axis=1, keepdims=True)
            costs[:, fresh] = np.median(costs[:, seen], axis=1, keepdims=True)
        quality = _fit(
            q_rows, q_cols, len(q_scores), q_scores, logistic=True, l2=l2, steps=steps, offset=offset, mask=labelled
        )
        log_len = np.log(chars)
        length = _fit(r_idx, c_idx, n, log_len, logistic=False, l2=l2, steps=steps)
        z = np.stack([np.bincount(r_idx, weights=length[c_idx, j], minlength=n) for j in range(len(models))], 1)
        margin = np.quantile(log_len - z, 0.95, axis=0).astype(np.float32)
        lengths = np.array([len(r.prompt) for r in rows], dtype=np.float64)
        # USD per prompt character and per call, per model: what the router expects a call to cost
        design = np.stack([lengths, np.ones(n)], 1)
        cost_fit = np.linalg.lstsq(design, costs, rcond=None)[0].astype(np.float64)
        meta = {
            "rows": n,
            "l2": l2,
            "steps": steps,
            "feature_bits": FEATURE_BITS,
            "cost_per_char": cost_fit[0].tolist(),
            "cost_base": cost_fit[1].tolist(),
            "format_priors": priors,
            "format_costs": {
                sig: costs[np.array([s == sig for s in signatures])].mean(0).tolist()
                for sig in priors
                if sig in signatures
            },
            "overall_prior": np.clip(overall, 0.01, 0.99).tolist(),
        }
        if feedback:
            meta["feedback_rows"] = len(feedback)
        return cls(models, quality, length, margin, {prompt_id(r.prompt) for r in rows}, meta)

    def expected_cost(self, text: str) -> NDArray[np.float64]:
        """USD each model is expected to cost for ``text`` (from the training data's costs)."""
        # prompts of a known format cost what that format cost on average (answer lengths differ
        # far more between formats than prompt lengths do); others by prompt length
        known = self.meta.get("format_costs", {}).get(format_signature(text))
        if known is not None:
            return np.asarray(known, dtype=np.float64)
        per_char = np.asarray(self.meta.get("cost_per_char", [0.0] * len(self.models)))
        base = np.asarray(self.meta.get("cost_base", [0.0] * len(self.models)))
        expected: NDArray[np.float64] = np.maximum(per_char * len(text) + base, 0.0)
        return expected

    def predict(self, text: str) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """``(P(correct) per model, output-token budget covering ~95% of answers per model)``."""
        feats, signature = features_and_signature(text)
        k = len(self.models)
        sums = self._weights[feats].sum(axis=0, dtype=np.float64)
        log_p, log_not_p = self._prior_odds.get(signature, self._overall_odds)
        z = sums[:k] + log_p - log_not_p
        quality = 1.0 / (1.0 + np.exp(-z))
        log_chars = sums[k:] + self._length_margin
        tokens = np.ceil(np.exp(np.minimum(log_chars, 14.0)) / CHARS_PER_TOKEN)
        return quality, tokens

    def save(self, path: str | Path, half: bool = False) -> None:
        """Write the predictor as a compressed ``.npz`` (weights stored sparsely).

        Args:
            half: store the weights as float16 (half the size; predictions move by ~0.1%).
        """
        used = np.flatnonzero(np.abs(self._quality).sum(1) + np.abs(self._length).sum(1))
        header = {"models": self.models, "meta": self.meta, "format": 1}
        dtype = np.float16 if half else np.float32
        with open(path, "wb") as handle:
            np.savez_compressed(
                handle,
                header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
                used=used.astype(np.int64),
                quality=self._quality[used].astype(dtype),
                length=self._length[used].astype(dtype),
                length_margin=self._length_margin,
                train_ids=np.array(sorted(self.train_ids)),
            )

    @classmethod
    def load(cls, path: str | Path) -> QualityPredictor:
        """Read a file written by `save`.

        Raises:
            ValueError: not a predictor file, or of an unknown format.
        """
        try:
            with np.load(path, allow_pickle=False) as data:
                header = json.loads(bytes(data["header"]).decode())
                if header.get("format") != 1:
                    raise ValueError(f"{path}: unknown router file format {header.get('format')!r}")
                k = len(header["models"])
                quality = np.zeros((1 << FEATURE_BITS, k), dtype=np.float32)
                length = np.zeros((1 << FEATURE_BITS, k), dtype=np.float32)
                quality[data["used"]] = data["quality"]
                length[data["used"]] = data["length"]
                return cls(
                    header["models"],
                    quality,
                    length,
                    data["length_margin"],
                    {str(x) for x in data["train_ids"]},
                    header.get("meta"),
                )
        except (OSError, KeyError, ValueError) as exc:  # JSONDecodeError is a ValueError
            raise ValueError(f"{path}: not a payrouter router file ({exc})") from None
