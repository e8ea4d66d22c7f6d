"""The payrouter console script, run as a user would: a real subprocess."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from payrouter.devchain import BATCH_SETTLEMENT_ADDRESS, ERC3009_DEPOSIT_COLLECTOR_ADDRESS

ROOT = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).parent / "payrouter"


def run(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        input=stdin,
    )


def test_version_and_help() -> None:
    assert run("--version").stdout.startswith("payrouter ")
    assert "demo" in run("--help").stdout


def test_prices_check_and_quote() -> None:
    check = run("prices", "check", "examples/prices.toml")
    assert check.returncode == 0 and "ok: 5 models on eip155:8453" in check.stdout
    quote = run(
        "prices",
        "quote",
        "examples/prices.toml",
        "--model",
        "gpt-4o",
        "--input-tokens",
        "1000",
        "--output-tokens",
        "500",
    )
    assert json.loads(quote.stdout) | {} == {
        "model": "gpt-4o",
        "input_tokens": 1000,
        "output_tokens": 500,
        "upstream_cost": "7500",
        "amount": "9100",
        "asset": "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913",
        "network": "eip155:8453",
    }
    request = {"model": "auto", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    from_request = json.loads(
        run("prices", "quote", "examples/prices.toml", "--request", "-", stdin=json.dumps(request)).stdout
    )
    assert from_request["model"] == "gpt-4o-mini" and from_request["output_tokens"] == 100


def test_bad_table_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "prices.toml"
    bad.write_text((ROOT / "examples/prices.toml").read_text().replace('markup = "0.25"', "markup = 0.25"))
    result = run("prices", "check", str(bad))
    assert result.returncode == 2
    assert "models[0].markup" in result.stderr and "floats lose cents" in result.stderr
    assert "Traceback" not in result.stderr


def test_keystore_commands_never_print_the_password(tmp_path: Path) -> None:
    env = {"PR_TEST_PW": "s3cret-pass"}
    path = tmp_path / "operator.json"
    created = run("keys", "new", "--out", str(path), "--password-env", "PR_TEST_PW", env=env)
    assert created.returncode == 0, created.stderr
    address = json.loads(created.stdout)["address"]
    shown = run("keys", "address", str(path), "--password-env", "PR_TEST_PW", env=env)
    assert shown.stdout.strip() == address
    wrong = run("keys", "address", str(path), "--password-env", "PR_TEST_PW", env={"PR_TEST_PW": "nope"})
    assert wrong.returncode == 2 and "wrong password" in wrong.stderr
    for out in (created, shown, wrong):
        assert "s3cret-pass" not in out.stdout + out.stderr


def test_demo_makes_paid_calls_and_refuses_a_replay() -> None:
    result = run("demo")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.count("paid   200") == 3
    assert out.count("tx     0x") == 3
    assert "replay of the last payment: 200, same receipt: True, charged again: 0" in out
    # the operator's final balance is the sum of the three quotes
    quotes = [int(line.split()[1]) for line in out.splitlines() if line.startswith("quote  ")]
    last_funds = [line for line in out.splitlines() if line.startswith("funds  ") and "operator $" in line][-1]
    operator = last_funds.split("operator $")[1]
    assert int(operator.replace(".", "")) == sum(quotes)
    # the channel part: each call charged the tokens it used, below its quote; a refund, and the
    # agent spent exactly the sum of the charges
    channel_calls = [line for line in out.splitlines() if line.startswith("paid   ") and "charged $" in line]
    assert len(channel_calls) == 4 and "deposited $" in channel_calls[0]
    for line in channel_calls:
        quote = int(line.split("quote $")[1].split(",")[0].replace(".", ""))
        charged = int(line.split("charged $")[1].split()[0].replace(".", ""))
        assert 0 < charged < quote
    assert "refund $" in out
    spent = next(line for line in out.splitlines() if "the agent spent" in line)
    assert spent.split("spent ")[1].split(" =")[0] == spent.split("charges ")[1]


def test_dev_sandbox_json_line_and_clean_stop(tmp_path: Path) -> None:
    import signal

    import httpx

    env = {**os.environ, "PAYROUTER_SANDBOX_FILE": str(tmp_path / "sandbox.json")}  # not the home folder's
    with subprocess.Popen(
        [str(CLI), "dev", "--json", "--port", "0", "--agents", "2"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert set(info) >= {
            "router_url", "rpc_url", "chain_id", "network", "asset", "asset_name", "asset_version", "pay_to",
            "agent_private_keys",
        }  # fmt: skip
        assert info["chain_id"] == 31337 and info["network"] == "eip155:31337" and len(info["agent_private_keys"]) == 2
        assert (info["asset_name"], info["asset_version"]) == ("USD Coin", "2")
        # the batch-settlement contracts sit where the official clients look for them
        assert (info["batch_settlement"], info["deposit_collector"]) == (
            BATCH_SETTLEMENT_ADDRESS,
            ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
        )
        for address in (BATCH_SETTLEMENT_ADDRESS, ERC3009_DEPOSIT_COLLECTOR_ADDRESS):
            code = httpx.post(
                info["rpc_url"],
                json={"jsonrpc": "2.0", "id": 1, "method": "eth_getCode", "params": [address, "latest"]},
            ).json()["result"]
            assert len(code) > 1000, address
        models = httpx.get(f"{info['router_url']}/v1/models").json()
        assert models["payment"]["asset"]["address"] == info["asset"] and models["payment"]["pay_to"] == info["pay_to"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    for url in (info["router_url"], info["rpc_url"]):
        with pytest.raises(httpx.HTTPError):
            httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}, timeout=2)


def _no_tty(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI with stdin on /dev/null: no terminal to prompt on (CI, a pipe, a service)."""
    return subprocess.run(
        [str(CLI), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def test_keys_new_without_a_terminal_says_how_to_give_the_password(tmp_path: Path) -> None:
    for command in (("keys", "new", "--out"), ("wallet", "new", "--keystore")):
        result = _no_tty(*command, str(tmp_path / "k.json"))
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
        assert "no terminal" in result.stderr and "--password-env" in result.stderr
        assert not (tmp_path / "k.json").exists()


def test_an_existing_keystore_is_refused_before_the_password_is_asked(tmp_path: Path) -> None:
    existing = tmp_path / "operator.json"
    existing.write_text("{}")
    for command in (("keys", "new", "--out"), ("wallet", "new", "--keystore")):
        # no terminal and no --password-env: had it asked for the password first, it would say so
        result = _no_tty(*command, str(existing))
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert "exists" in result.stderr and "no terminal" not in result.stderr, result.stderr
    assert existing.read_text() == "{}"


def _options(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _options(child, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction | argparse._VersionAction):
            yield f"{path} {'/'.join(action.option_strings) or action.dest}", action


def test_every_flag_and_argument_has_help_text() -> None:
    from payrouter.cli import _parser

    options = list(_options(_parser(), "payrouter"))
    assert len(options) > 80
    missing = [name for name, action in options if not action.help]
    assert missing == []


def test_chat_has_a_default_spending_cap() -> None:
    from payrouter.agent_cli import DEFAULT_MAX_PRICE
    from payrouter.cli import _parser

    args = _parser().parse_args(["chat", "hi", "--router", "http://127.0.0.1:1"])
    assert args.max_price == DEFAULT_MAX_PRICE == "0.10"
    assert "default 0.10" in " ".join(run("chat", "--help").stdout.split())


def test_dev_fund_without_a_sandbox_is_a_clear_error(tmp_path: Path) -> None:
    result = run("dev", "fund", "0x" + "ab" * 20, env={"PAYROUTER_SANDBOX_FILE": str(tmp_path / "none.json")})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "no sandbox is running" in result.stderr and "payrouter dev" in result.stderr


def test_scripts_test_can_run_only_pytest() -> None:
    result = subprocess.run(
        [str(ROOT / "scripts/test"), "--pytest-only", "-q", "--collect-only", "tests/test_layering.py"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "== pytest" in result.stderr and "== ruff" not in result.stderr and "== mypy" not in result.stderr
    assert "test_layering.py" in result.stdout
