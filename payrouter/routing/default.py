"""The packaged default router: trained on the shared RouterBench slice, used for ``auto``
when the price table names no router file.

Rebuild it with ``scripts/build_default_router`` (this module's ``main``); training is
deterministic, and ``tests/routing/test_default_router.py`` checks that the shipped file is
what this builds. The file holds weights over hashed prompt features and per-format base
rates, not the training prompts.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from payrouter.routing.predictor import DEFAULT_L2, DEFAULT_STEPS, QualityPredictor, load_rows

__all__ = ["DEFAULT_DATA", "DEFAULT_ROUTER", "build_default_router"]

DEFAULT_ROUTER = Path(__file__).resolve().parent / "default_router.npz"
# the shared data sits beside the repository, read-only (never committed)
DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "routerbench" / "train.csv"


def build_default_router(data: Path = DEFAULT_DATA, out: Path = DEFAULT_ROUTER) -> QualityPredictor:
    """Train the default router on ``data`` with the default settings and write it to ``out``
    (float16 weights: ~1 MB).

    Raises:
        OSError: ``data`` cannot be read.
        ValueError: ``data`` is not RouterBench-format.
    """
    predictor = QualityPredictor.train(load_rows([data]), l2=DEFAULT_L2, steps=DEFAULT_STEPS)
    predictor.save(out, half=True)
    return predictor


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m payrouter.routing.default [--data CSV] [--out NPZ]``."""
    parser = argparse.ArgumentParser(description="rebuild the packaged default router")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="RouterBench-format training CSV")
    parser.add_argument("--out", type=Path, default=DEFAULT_ROUTER, help="router file to write")
    args = parser.parse_args(argv)
    predictor = build_default_router(args.data, args.out)
    sys.stdout.write(
        f"default router: {len(predictor.train_ids)} prompts x {len(predictor.models)} models -> {args.out}\n"
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
