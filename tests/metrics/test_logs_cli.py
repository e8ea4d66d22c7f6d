"""``payrouter logs``: filters over a request log, and ``--why`` on real requests."""

from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from payrouter.cli import main
from payrouter.request_log import RequestLog
from payrouter.sandbox.dev import Sandbox
from tests.integration.conftest import Observer
from tests.integration.payments import header, offer, payment, rejection
from tests.integration.servers import CLI
from tests.polling import wait_until

from .conftest import Servers

PAYER_A = "0xAaAaAaAaAaAaAaAaAaAaAaAaAaAaAaAaAaAaAaAa"
PAYER_B = "0xBbBbBbBbBbBbBbBbBbBbBbBbBbBbBbBbBbBbBbBb"
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def _event(n: int, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "ts": T0 + n * 3600,
        "event": "call",
        "request_id": f"chatcmpl-{n}",
        "payer": PAYER_A,
        "endpoint": "/v1/chat/completions",
        "status": 200,
        "scheme": "exact",
        "model": "gpt-4o-mini",
        "routed_model": "gpt-4o-mini",
        "strategy": "cost",
        "reason": "cost: predicted quality 75.0, price 500",
        "reason_kind": "strategy",
        "rule": "",
        "arm": "",
        "candidates": [
            {"model": "gpt-4o-mini", "quality_bp": 7500, "price": 500, "latency_ms": 700},
            {"model": "gpt-4o", "quality_bp": 8200, "price": 9000, "latency_ms": 900},
        ],
        "price": 500,
        "charged": 500,
        "cost": 120,
        "input_tokens": 12,
        "output_tokens": 30,
        "latency_ms": 12.5,
        "upstream_ms": 8.25,
        "state": "settled",
        "tx": "0x" + "ab" * 32,
        "refusal": None,
    }
    base.update(fields)
    return base


EVENTS = [
    _event(0),
    _event(1, payer=PAYER_B, model="gpt-4o", routed_model="claude-sonnet-4"),
    _event(
        2,
        event="refusal",
        request_id="",
        charged=0,
        tx=None,
        refusal="invalid_exact_evm_payload_signature",
        message="bad",
    ),
    _event(3, status=502, charged=0, cost=0, state="released", tx=None, refusal="upstream_failed"),
    _event(4, payer=PAYER_B),
]


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    path = tmp_path / "requests.jsonl"
    log = RequestLog(path)
    for event in EVENTS:
        log.write(event)
    log.close()
    with path.open("a") as f:
        f.write('{"torn": ')  # a line cut by a crash is skipped
    return path


def _json_run(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, Any]]:
    assert main(["logs", *args, "--json"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def _ids(events: list[dict[str, Any]]) -> list[float]:
    return [(e["ts"] - T0) / 3600 for e in events]


def test_filters(log_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = str(log_file)
    assert _ids(_json_run(capsys, "--file", f)) == [0, 1, 2, 3, 4]
    assert _ids(_json_run(capsys, "--file", f, "--request-id", "chatcmpl-3")) == [3]
    assert _ids(_json_run(capsys, "--file", f, "--payer", PAYER_B.lower())) == [1, 4]
    assert _ids(_json_run(capsys, "--file", f, "--model", "claude-sonnet-4")) == [1]  # routed there
    assert _ids(_json_run(capsys, "--file", f, "--model", "gpt-4o")) == [1]  # answered there
    assert _ids(_json_run(capsys, "--file", f, "--refusals")) == [2, 3]
    assert _ids(_json_run(capsys, "--file", f, "--since", "2026-01-01T01:00:00Z", "--until", "2026-01-01T03:00")) == [
        1,
        2,
    ]
    assert _ids(_json_run(capsys, "--file", f, "--since", str(int(T0 + 4 * 3600)))) == [4]
    assert _ids(_json_run(capsys, "--file", f, "--limit", "2")) == [3, 4]
    assert _json_run(capsys, "--file", f, "--payer", PAYER_A, "--refusals", "--model", "gpt-4o-mini")[0] == EVENTS[2]


def test_table_and_why(log_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["logs", "--file", str(log_file), "--payer", PAYER_B]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["time", "request", "event"]
    assert [row.split()[1] for row in table[1:]] == ["chatcmpl-1", "chatcmpl-4"]

    assert main(["logs", "--file", str(log_file), "--why", "chatcmpl-1"]) == 0
    why = capsys.readouterr().out
    assert "routed to claude-sonnet-4; it failed and gpt-4o answered (failover)" in why
    assert "cost: predicted quality 75.0, price 500" in why
    assert "quoted 500, charged 500" in why and "upstream 120, margin 380" in why
    assert "tx 0x" + "ab" * 32 in why
    assert "82.0%" in why  # gpt-4o's predicted quality in the candidates table

    assert main(["logs", "--file", str(log_file), "--why", "chatcmpl-3"]) == 0
    assert "refused (upstream_failed)" in capsys.readouterr().out
    assert main(["logs", "--file", str(log_file), "--why", "chatcmpl-404"]) == 1


def test_config_without_a_request_log_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "payrouter.toml"
    config.write_text('price_table = "prices.toml"\n')
    assert main(["logs", "--config", str(config)]) == 2
    assert "names no request_log" in capsys.readouterr().err


def _cli(*args: str) -> str:
    done = subprocess.run([str(CLI), "logs", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_why_a_real_request_went_where_it_did(
    servers: Servers, mbox: Sandbox, mobserver: Observer, capsys: pytest.CaptureFixture[str]
) -> None:
    url = servers.urls[0] + "/v1/chat/completions"
    agent = mbox.agents[2]
    with httpx.Client(timeout=30) as http:
        body = {
            "model": "auto:quality",
            "max_tokens": 24,
            "messages": [{"role": "user", "content": secrets.token_hex(5)}],
        }
        o = offer(http, url, body)
        route = o["accepts"][0]["extra"]["route"]
        mobserver.control(fail_next=1, fail_status=503)
        paid = http.post(url, json=body, headers=header(payment(o, agent)))
        assert paid.status_code == 200, paid.text
        mobserver.control(fail_next=0)
        refused_body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": secrets.token_hex(5)}]}
        o2 = offer(http, url, refused_body)
        refused = http.post(url, json=refused_body, headers=header(payment(o2, agent, to=agent.address)))
        _, reason = rejection(refused)
    request_id = paid.json()["id"]
    report = paid.json()["usage"]["payrouter"]

    wait_until(lambda: request_id in servers.request_log.read_text(), "the call's line written")
    why = _cli("--config", str(servers.config), "--why", request_id)
    assert f"request   {request_id}" in why
    assert f"routed to {route['model']}; it failed and {report['answered_by']} answered (failover)" in why
    for candidate in route["candidates"]:
        assert candidate["model"] in why
    assert f"charged {report['charged']} (" in why and " USD)" in why  # amounts also in dollars
    assert f"payer     {agent.address}" in why
    assert "payment   exact, settled, tx 0x" in why

    refusals = _json_run(capsys, "--config", str(servers.config), "--refusals")
    assert refusals and all(e["event"] == "refusal" or e["refusal"] for e in refusals)
    assert any(e["payer"] == agent.address and e["refusal"] == reason for e in refusals)
