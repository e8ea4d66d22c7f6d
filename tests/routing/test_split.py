"""Traffic splits: shares, determinism, arms recorded on the decision, validation of the rule."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import pytest

from payrouter.routing import RouteConstraints, RoutingEngine
from payrouter.routing.split import split_arm
from pricing import PriceTable, PriceTableError, parse_price_table

from .test_engine import BASE, decide, req


def _table(*rules: dict[str, Any]) -> PriceTable:
    data = copy.deepcopy(BASE)
    data["routing"]["rules"] = list(rules)
    return parse_price_table(data)


@pytest.mark.parametrize("split", [{"new": 10}, {"new": 50}, {"a": 3, "b": 25}])
def test_shares_within_two_points_over_2000_digests(split: dict[str, int]) -> None:
    keys = [hashlib.sha256(f"request {i}".encode()).digest() for i in range(2000)]
    arms = [split_arm(split, "canary", k) for k in keys]
    for model, percent in split.items():
        share = 100 * arms.count(model) / len(keys)
        assert abs(share - percent) <= 2, (model, share)
    assert arms == [split_arm(split, "canary", k) for k in keys]  # deterministic


def test_engine_splits_matching_requests_and_records_rule_and_arm() -> None:
    table = _table({"name": "try premium", "split": {"premium": 10}})
    decisions = [decide(table, req(f"question number {i}: what is {i} + {i}?")) for i in range(2000)]
    trial = [d for d in decisions if d.arm == "trial"]
    control = [d for d in decisions if d.arm == "control"]
    assert len(trial) + len(control) == 2000
    assert abs(100 * len(trial) / 2000 - 10) <= 2
    assert {d.model for d in trial} == {"premium"} and {d.rule for d in decisions} == {"try premium"}
    assert all(d.model != "premium" for d in control)  # the strategy alone does not pick premium here
    assert all("trial arm" in d.reason for d in trial)
    # the trial's fallbacks are the control arm's ranking
    assert trial[0].fallbacks[0] == control[0].model
    # the same request lands in the same arm every time
    again = decide(table, req("question number 7: what is 7 + 7?"))
    assert again == decisions[7]


def test_split_applies_only_to_requests_the_rule_matches() -> None:
    table = _table({"name": "canary", "keywords": ["invoice"], "model": "middle", "split": {"premium": 50}})
    outside = [decide(table, req(f"hello {i}")) for i in range(50)]
    assert all(d.arm == "" and d.rule == "" for d in outside)
    inside = [decide(table, req(f"invoice {i}")) for i in range(200)]
    assert {d.model for d in inside if d.arm == "control"} == {"middle"}  # the rule's own effect
    assert {d.model for d in inside if d.arm == "trial"} == {"premium"}
    named = decide(table, req("invoice 1", model="cheap"))  # a named model is never split
    assert (named.model, named.arm) == ("cheap", "")


def test_a_trial_never_breaks_a_request() -> None:
    table = _table({"name": "canary", "split": {"local": 100}})
    assert decide(table, req("hi")).arm == "trial"
    # "local" lacks tools: a request needing them stays in the control arm
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    d = decide(table, req("hi", tools=tools))
    assert (d.arm, d.model != "local") == ("control", True)
    # excluded by the caller, or above the caller's price cap
    assert decide(table, req("hi"), RouteConstraints(ignore=frozenset({"local"}))).arm == "control"
    assert decide(table, req("hi"), RouteConstraints(only=frozenset({"cheap"}))).model == "cheap"
    # an open breaker on the trial model sends its share to control
    sick = RoutingEngine(health=lambda m: m != "local")
    assert decide(table, req("hi"), engine=sick).arm == "control"


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"name": "r", "split": {"premium": 60, "middle": 50}}, "more than 100%"),
        ({"name": "r", "split": {"nope": 10}}, "unknown model 'nope'"),
        ({"name": "r", "split": {"premium": 0}}, "greater than or equal to 1"),
        ({"name": "r", "keywords": ["x"], "model": "premium", "split": {"premium": 10}}, "control arm"),
        ({"name": "r", "model": "premium"}, "at least one condition"),
    ],
)
def test_bad_splits_are_refused(rule: dict[str, Any], message: str) -> None:
    with pytest.raises(PriceTableError) as info:
        _table(rule)
    assert message in str(info.value)
