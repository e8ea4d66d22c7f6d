"""The agent CLI end to end against the sandbox: wallet, quote, chat."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

from payrouter.sandbox.dev import Sandbox
from wallets import LocalSigner

from .conftest import Observer

CLI = Path(sys.executable).parent / "payrouter"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != "PAYROUTER_PRIVATE_KEY"} | (env or {})
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=120, env=full)


def test_wallet_commands(box: Sandbox, tmp_path: Path) -> None:
    printed = run("wallet", "new", "--print-key")
    assert printed.returncode == 0 and printed.stdout.startswith("PAYROUTER_PRIVATE_KEY=0x")
    key = printed.stdout.strip().split("=", 1)[1]
    address = LocalSigner(key).address
    assert address in printed.stderr
    shown = run("wallet", "show", env={"PAYROUTER_PRIVATE_KEY": key})
    assert shown.stdout.strip() == address
    refused = run("wallet", "new")
    assert refused.returncode != 0 and "--keystore" in refused.stderr
    store = tmp_path / "agent.json"
    made = run("wallet", "new", "--keystore", str(store), "--password-env", "PW", env={"PW": "pw-123"})
    assert made.returncode == 0, made.stderr
    assert (
        run("wallet", "show", "--keystore", str(store), "--password-env", "PW", env={"PW": "pw-123"}).stdout.strip()
        == (json.loads(made.stdout)["address"])
    )
    box.token.mint(address, 1_234_567)
    balance = run(
        "wallet", "balance", "--router", box.router_url, "--rpc", box.chain.rpc_url, "--json",
        env={"PAYROUTER_PRIVATE_KEY": key},
    )  # fmt: skip
    assert balance.returncode == 0, balance.stderr
    assert json.loads(balance.stdout) == {
        "address": address,
        "network": box.chain.network,
        "asset": box.token.address,
        "balance": "1234567",
    }
    missing = run("wallet", "show")
    assert missing.returncode != 0 and "PAYROUTER_PRIVATE_KEY" in missing.stderr


def test_quote_and_chat(box: Sandbox, observer: Observer, tmp_path: Path) -> None:
    agent = LocalSigner.generate()
    box.token.mint(agent.address, 5_000_000)
    env = {
        "PAYROUTER_PRIVATE_KEY": agent.unsafe_export_private_key(),
        "PAYROUTER_BUDGET_FILE": str(tmp_path / "b.json"),
    }
    prompt = f"What is a stablecoin? {secrets.token_hex(3)}"
    quote = run("quote", prompt, "--router", box.router_url, "--max-tokens", "60", "--json")
    assert quote.returncode == 0, quote.stderr
    amount = json.loads(quote.stdout)["price"]["amount"]
    human = run("quote", prompt, "--router", box.router_url, "--max-tokens", "60")
    assert "price   $0.00" in human.stdout

    too_cheap = run(
        "chat", prompt, "--router", box.router_url, "--max-tokens", "60", "--max-price", "0.000001", env=env
    )
    assert too_cheap.returncode == 3 and "refused (max_per_call)" in too_cheap.stderr
    assert observer.balances(agent.address) == [5_000_000]

    chat = run(
        "chat", prompt, "--router", box.router_url, "--max-tokens", "60", "--max-price", "0.05", "--json", env=env
    )
    assert chat.returncode == 0, chat.stderr
    result = json.loads(chat.stdout)
    assert set(result) == {"answer", "model", "amount", "asset", "network", "transaction"}
    assert result["amount"] == amount and result["asset"] == box.token.address
    assert result["network"] == box.chain.network and result["answer"]
    assert box.chain.w3.eth.get_transaction_receipt(result["transaction"])["status"] == 1
    assert observer.balances(agent.address) == [5_000_000 - int(amount)]

    plain = run("chat", f"hi {secrets.token_hex(3)}", "--router", box.router_url, env=env)
    assert plain.returncode == 0 and "| tx 0x" in plain.stdout
