"""The routing engine: every strategy, every constraint, rules, and the learned predictor."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from payrouter.chat import ChatRequest
from payrouter.routing import RouteConstraints, RoutingEngine, RoutingError
from payrouter.routing.constraints import ConstraintError
from payrouter.routing.predictor import QualityPredictor, load_rows
from pricing import PriceTable, estimate_chat_input_tokens, parse_price_table

from . import synthetic


def _model(mid: str, inp: str, out: str, quality: int, **kw: Any) -> dict[str, Any]:
    return {
        "id": mid,
        "provider": "p",
        "upstream_model": mid,
        "input_per_mtok": inp,
        "output_per_mtok": out,
        "context_window": 100_000,
        "max_output_tokens": 4096,
        "quality": {"general": quality},
        "capabilities": ["tools", "json", "vision"],
        **kw,
    }


BASE: dict[str, Any] = {
    "network": "eip155:31337",
    "pay_to": "0x90F79bf6EB2c4f870365E785982E1f101E93b906",
    "default_model": "cheap",
    "asset": {"address": "0x5FbDB2315678afecb367f032d93F642f64180aa3"},
    "routing": {"quality_floor": 60, "usd_per_quality_point": "0.001"},
    "models": [
        _model("cheap", "0.10", "0.40", 55, router_name="weak", first_token_ms=300, tokens_per_second=200),
        _model("middle", "1.00", "4.00", 75, router_name="mid", first_token_ms=200, tokens_per_second=100),
        _model("premium", "10.00", "40.00", 92, router_name="strong", first_token_ms=900, tokens_per_second=30),
        _model("local", "0.50", "0.50", 65, privacy="local", capabilities=[], first_token_ms=50, tokens_per_second=500),
    ],
}


def table(**routing: Any) -> PriceTable:
    data = copy.deepcopy(BASE)
    data["routing"].update(routing)
    return parse_price_table(data)


def req(text: str = "hello there", model: str = "auto", **kw: Any) -> ChatRequest:
    return ChatRequest.model_validate({"model": model, "messages": [{"role": "user", "content": text}], **kw})


def decide(t: PriceTable, r: ChatRequest, c: RouteConstraints | None = None, engine: RoutingEngine | None = None):
    tokens = estimate_chat_input_tokens([m.model_dump(exclude_none=True) for m in r.messages], r.tools)
    return (engine or RoutingEngine()).decide(r, tokens, t, c)


def test_quality_strategy_takes_the_best() -> None:
    d = decide(table(), req(model="auto:quality"))
    assert d.model == "premium" and d.strategy == "quality"
    assert [c.model for c in d.candidates][0] == "premium"
    assert d.fallbacks == ("middle", "local", "cheap")


def test_cost_strategy_takes_the_cheapest_above_the_floor() -> None:
    d = decide(table(quality_floor=60), req(model="auto:cost"))
    assert d.model == "local"  # 65 >= 60 and cheaper than middle
    assert decide(table(quality_floor=70), req(model="auto:cost")).model == "middle"
    # nothing reaches the floor: the best available
    assert decide(table(quality_floor=99), req(model="auto:cost")).model == "premium"


def test_latency_strategy_takes_the_fastest_above_the_floor() -> None:
    d = decide(table(quality_floor=60), req(model="auto:latency", max_tokens=100))
    assert d.model == "local"  # 50 ms + 100 tokens at 500/s
    assert decide(table(quality_floor=70), req(model="auto:latency", max_tokens=100)).model == "middle"


def test_balanced_trades_quality_for_price() -> None:
    # willing to pay $1 per quality point: quality wins
    assert decide(table(usd_per_quality_point="1"), req(max_tokens=1000)).model == "premium"
    # willing to pay almost nothing: the cheapest wins
    assert decide(table(usd_per_quality_point="0.0000001"), req(max_tokens=1000)).model == "cheap"
    d = decide(table(usd_per_quality_point="0.0002"), req(max_tokens=1000))
    assert d.strategy == "balanced" and "predicted quality" in d.reason


def test_decisions_are_deterministic() -> None:
    t = table()
    assert decide(t, req("the same prompt")) == decide(t, req("the same prompt"))


def test_unknown_strategy_and_model() -> None:
    with pytest.raises(RoutingError, match="unknown strategy 'fastest'"):
        decide(table(), req(model="auto:fastest"))
    with pytest.raises(RoutingError, match="unknown model 'nope'"):
        decide(table(), req(model="nope"))


def test_max_price_constraint() -> None:
    t = table()
    prices = {c.model: c.price for c in decide(t, req(model="auto:quality", max_tokens=1000)).candidates}
    cap = prices["middle"]
    d = decide(t, req(model="auto:quality", max_tokens=1000), RouteConstraints(max_price=cap))
    assert d.model == "middle" and all(c.price <= cap for c in d.candidates)
    with pytest.raises(RoutingError, match=r"max_price 1: the cheapest fitting route \(cheap\) costs"):
        decide(t, req(max_tokens=1000), RouteConstraints(max_price=1))
    # a named model over the cap is refused, not silently swapped
    with pytest.raises(RoutingError, match="max_price"):
        decide(t, req(model="premium", max_tokens=1000), RouteConstraints(max_price=cap))


def test_only_ignore_privacy_capabilities() -> None:
    t = table()
    assert decide(t, req(model="auto:quality"), RouteConstraints(only=frozenset({"cheap", "middle"}))).model == "middle"
    assert decide(t, req(model="auto:quality"), RouteConstraints(ignore=frozenset({"premium"}))).model == "middle"
    assert decide(t, req(model="auto:quality"), RouteConstraints(privacy="local")).model == "local"
    with pytest.raises(RoutingError, match=r"constraint: only \['ghost'\]"):
        decide(t, req(), RouteConstraints(only=frozenset({"ghost"})))
    with pytest.raises(RoutingError, match="privacy local"):
        decide(t, req(), RouteConstraints(privacy="local", ignore=frozenset({"local"})))
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    d = decide(t, req(model="auto:cost", tools=tools))
    assert "local" not in [c.model for c in d.candidates]  # local has no tools capability
    with pytest.raises(RoutingError, match=r"capabilities \['tools'\]"):
        decide(t, req(model="local", tools=tools))
    # the one model the earlier constraints leave is named in the refusal
    with pytest.raises(RoutingError, match=r"^model 'local' does not satisfy the constraint: capabilities \['tools'\]"):
        decide(t, req(model="auto:cost", tools=tools), RouteConstraints(only=frozenset({"local"})))
    image = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
    vision = ChatRequest.model_validate({"model": "auto:cost", "messages": [image]})
    assert "local" not in [c.model for c in decide(t, vision).candidates]


def test_context_window_and_output_limit() -> None:
    t = table()
    with pytest.raises(RoutingError, match="max_tokens 5000 within the output limit"):
        decide(t, req(max_tokens=5000))
    long_prompt = "word " * 420_000  # ~525k tokens
    with pytest.raises(RoutingError, match="context window"):
        decide(t, req(long_prompt))


def test_unhealthy_models_are_skipped_while_others_exist() -> None:
    t = table()
    engine = RoutingEngine(health=lambda m: m != "premium")
    assert decide(t, req(model="auto:quality"), engine=engine).model == "middle"
    all_down = RoutingEngine(health=lambda m: False)
    assert decide(t, req(model="auto:quality"), engine=all_down).model == "premium"


def test_rules() -> None:
    t = parse_price_table(
        {
            **copy.deepcopy(BASE),
            "routing": {
                "rules": [
                    {"name": "legal to premium", "keywords": ["contract", "lawsuit"], "model": "premium"},
                    {"name": "vip", "metadata": {"tier": "vip"}, "strategy": "quality"},
                    {"name": "sql local", "regex": "(?i)select .* from", "only": ["local", "cheap"]},
                ]
            },
        }
    )
    d = decide(t, req("Review this CONTRACT please"))
    assert d.model == "premium" and "rule 'legal to premium'" in d.reason
    assert decide(t, req("hi", metadata={"tier": "vip"})).model == "premium"
    sql = decide(t, req("SELECT name FROM users"))
    assert {c.model for c in sql.candidates} <= {"local", "cheap"}
    with pytest.raises(ValueError, match="unknown model 'ghost'"):
        parse_price_table(
            {**copy.deepcopy(BASE), "routing": {"rules": [{"name": "x", "keywords": ["a"], "model": "ghost"}]}}
        )
    with pytest.raises(ValueError, match="needs at least one condition"):
        parse_price_table({**copy.deepcopy(BASE), "routing": {"rules": [{"name": "x", "model": "cheap"}]}})


def test_constraints_parse_from_body_and_headers() -> None:
    c = RouteConstraints.parse({"max_price": "900", "only": ["a", "b"]}, {"x-payrouter-ignore": "c, d"})
    assert c == RouteConstraints(max_price=900, only=frozenset({"a", "b"}), ignore=frozenset({"c", "d"}))
    assert RouteConstraints.parse({"max_price": 5}, {"x-payrouter-max-price": "7"}).max_price == 7
    cases: list[tuple[dict[str, Any], str | None]] = [
        ({"max_price": "1.5"}, "whole number"),
        ({"max_price": -3}, "whole number"),
        ({"privacy": "secret"}, "privacy"),
        ({"only": "x"}, None),
        ({"only": [1]}, "list of model ids"),
        ({"strategy": "vibes"}, "strategy"),
        ({"colour": "red"}, "unknown fields"),
    ]
    for bad, fragment in cases:
        if fragment is None:
            continue
        with pytest.raises(ConstraintError, match=fragment):
            RouteConstraints.parse(bad, {})


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> QualityPredictor:
    path = synthetic.write(tmp_path_factory.mktemp("data") / "train.csv", 300, seed=1)
    return QualityPredictor.train(load_rows([path]))


def test_learned_predictor_routes_by_difficulty(predictor: QualityPredictor) -> None:
    t = table(quality_floor=80)
    engine = RoutingEngine(predictor)
    easy = decide(
        t, req("A simple question about tides (9999)?\nA) yes\nB) no\nAnswer:", model="auto:cost"), engine=engine
    )
    hard = decide(
        t,
        req("A intricate multi-step question about tides (9999)?\nA) yes\nB) no\nAnswer:", model="auto:cost"),
        engine=engine,
    )
    code = decide(t, req("Write a python function that sorts tides number 9999.", model="auto:cost"), engine=engine)
    assert (easy.model, hard.model, code.model) == ("cheap", "middle", "premium")
    quality = {c.model: c.quality for c in easy.candidates}
    assert quality["cheap"] > 8000 and quality["local"] == 6500  # local has no training data: its profile
    # output budgets come from the predicted answer length
    assert easy.output_tokens == 16 and code.output_tokens > 16


def test_predictor_round_trips_through_a_file(predictor: QualityPredictor, tmp_path: Path) -> None:
    path = tmp_path / "router.npz"
    predictor.save(path)
    loaded = QualityPredictor.load(path)
    text = "A simple question about rivers (1)?\nA) yes\nB) no\nAnswer:"
    assert (loaded.predict(text)[0] == predictor.predict(text)[0]).all()
    assert loaded.train_ids == predictor.train_ids
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a payrouter router file"):
        QualityPredictor.load(tmp_path / "junk.npz")
