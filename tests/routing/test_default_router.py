"""The packaged default router: it is what the build script makes from the shared data, it
knows every example model, and `auto` on a table naming no router file uses it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from payrouter.chat import ChatRequest
from payrouter.reload import build_router, load_predictor
from payrouter.routing.default import DEFAULT_DATA, DEFAULT_ROUTER, build_default_router
from payrouter.routing.predictor import QualityPredictor
from pricing import estimate_chat_input_tokens, load_price_table

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "prices.toml"


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return isinstance(b, float) and abs(a - b) <= 1e-9 + 1e-6 * abs(a)
    return bool(a == b)


@pytest.mark.skipif(not DEFAULT_DATA.exists(), reason="the shared RouterBench data is not beside the repository")
def test_shipped_router_is_what_the_script_builds(tmp_path: Path) -> None:
    built = build_default_router(DEFAULT_DATA, tmp_path / "router.npz")
    shipped = QualityPredictor.load(DEFAULT_ROUTER)
    rebuilt = QualityPredictor.load(tmp_path / "router.npz")
    assert shipped.models == built.models == rebuilt.models
    assert shipped.train_ids == built.train_ids
    assert _close(shipped.meta, rebuilt.meta)
    # float16 weights: the same training rounds to the same half floats (one ulp of slack for
    # another machine's float32 arithmetic)
    for name in ("_quality", "_length", "_length_margin"):
        assert np.allclose(getattr(shipped, name), getattr(rebuilt, name), rtol=2e-3, atol=1e-4), name
    for text in ["What is x402, in one line?", "def add(a, b):\n    return a + b\n# fix the bug"]:
        assert np.allclose(shipped.predict(text)[0], built.predict(text)[0], atol=2e-3)
    assert DEFAULT_ROUTER.stat().st_size < 2_000_000


def test_every_example_model_maps_to_a_training_name() -> None:
    known = set(QualityPredictor.load(DEFAULT_ROUTER).models)
    table = load_price_table(EXAMPLE)
    assert table.routing.predictor is None
    assert {m.id: m.router_name in known for m in table.models} == {m.id: True for m in table.models}


def test_auto_uses_the_default_router_when_the_table_names_none() -> None:
    table = load_price_table(EXAMPLE)
    predictor = load_predictor(table)
    assert predictor is not None and predictor.models == QualityPredictor.load(DEFAULT_ROUTER).models
    engine = build_router(table, lambda _m: True)
    request = ChatRequest.model_validate(
        {"model": "auto", "messages": [{"role": "user", "content": "What is x402, in one line?"}]}
    )
    messages = [m.model_dump(exclude_none=True) for m in request.messages]
    decision = engine.decide(request, estimate_chat_input_tokens(messages, None), table)
    profile = {m.id: m.quality["general"] * 100 for m in table.models}
    # learned estimates, not the hand-written quality profile
    assert any(c.quality != profile[c.model] for c in decision.candidates)
    quality, _ = predictor.predict("What is x402, in one line?")
    by_model = {m.id: round(float(quality[predictor.index[m.router_name or ""]]) * 10_000) for m in table.models}
    assert {c.model: c.quality for c in decision.candidates} == by_model
