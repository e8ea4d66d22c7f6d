"""A canary split on the paid path: each paid call is served by its quote's arm, the arms are
counted in the split metrics, the request log records rule and arm per call, and a rating of
a trial call is counted for the trial arm."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from payrouter.app import create_app
from payrouter.feedback import sign_feedback
from payrouter.sandbox.dev import Sandbox
from payrouter.sandbox.serving import serve_in_thread
from pricing import parse_price_table

from ..polling import wait_until
from .conftest import router_settings
from .payments import header, offer, payment

RULE = f"canary-{secrets.token_hex(3)}"  # unique: the metrics registry is shared by the process


@pytest.fixture
def canary_router(box: Sandbox, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    data = box.table.model_dump(mode="json")
    data["routing"]["rules"] = [{"name": RULE, "split": {"gpt-4o-mini": 50}}]
    settings = router_settings(box, parse_price_table(data), request_log=str(tmp_path / "requests.jsonl"))
    with serve_in_thread(create_app(settings)) as url:
        yield url, tmp_path / "requests.jsonl"


def _metric(text: str, name: str, **labels: str) -> float:
    want = [f'{k}="{v}"' for k, v in labels.items()]
    for line in text.splitlines():
        if line.startswith(name + "{") and all(w in line for w in want):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_paid_calls_follow_their_arm_and_are_counted_per_arm(
    canary_router: tuple[str, Path], box: Sandbox, http: httpx.Client
) -> None:
    router, log = canary_router
    url = f"{router}/v1/chat/completions"
    agent = box.agents[5]
    arms: dict[str, tuple[str, str]] = {}  # completion id -> (arm, model)
    for _ in range(12):
        body = {"model": "auto", "max_tokens": 16, "messages": [{"role": "user", "content": secrets.token_hex(6)}]}
        o = offer(http, url, body)
        route = o["accepts"][0]["extra"]["route"]
        arm = "trial" if "(trial arm)" in route["reason"] else "control"
        assert f"rule '{RULE}' ({arm} arm)" in route["reason"]
        paid = http.post(url, json=body, headers=header(payment(o, agent)))
        assert paid.status_code == 200, paid.text
        assert paid.headers["x-payrouter-model"] == route["model"]
        arms[paid.json()["id"]] = (arm, route["model"])
    trial = [cid for cid, (arm, _) in arms.items() if arm == "trial"]
    assert trial and len(trial) < len(arms)  # both arms served (50%: all in one arm is 2 in 4096)
    assert {m for a, m in arms.values() if a == "trial"} == {"gpt-4o-mini"}

    text = http.get(f"{router}/metrics").text
    calls = _metric(text, "payrouter_split_calls_total", rule=RULE, arm="trial", model="gpt-4o-mini")
    assert calls == len(trial)
    assert _metric(text, "payrouter_split_seconds_count", rule=RULE, arm="control") == len(arms) - len(trial)
    assert _metric(text, "payrouter_split_revenue_atomic_total", rule=RULE, arm="trial") > 0

    def logged() -> dict[str, dict[str, object]]:
        lines = log.read_text().splitlines() if log.exists() else []
        events = [json.loads(line) for line in lines]
        return {e["request_id"]: e for e in events if e.get("event") == "call" and e.get("request_id") in arms}

    def complete() -> dict[str, dict[str, object]] | None:
        found = logged()
        return found if len(found) == len(arms) else None

    events = wait_until(complete, "every call in the request log")
    assert events is not None
    assert {cid: (e["rule"], e["arm"]) for cid, e in events.items()} == {cid: (RULE, a) for cid, (a, _) in arms.items()}

    def rate() -> int | None:
        signature = sign_feedback(agent, trial[0], "good")
        body = {"completion_id": trial[0], "rating": "good", "signature": signature}
        status = http.post(f"{router}/v1/feedback", json=body).status_code
        return None if status == 404 else status

    assert wait_until(rate, "the trial call's feedback record") == 200
    text = http.get(f"{router}/metrics").text
    assert _metric(text, "payrouter_feedback_total", model="gpt-4o-mini", arm="trial", rating="good") >= 1

    def feedback_events() -> list[dict[str, object]]:
        lines = log.read_text().splitlines()
        return [e for e in map(json.loads, lines) if e.get("event") == "feedback"]

    rated = wait_until(feedback_events, "the feedback event in the request log")
    assert rated[-1]["request_id"] == trial[0] and rated[-1]["arm"] == "trial" and rated[-1]["features"]
