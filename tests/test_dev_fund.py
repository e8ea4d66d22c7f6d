"""A new agent wallet on the ``payrouter dev`` sandbox, as a newcomer meets it: ``chat`` without
funds says how to get them, ``dev fund`` gets them, ``chat`` then pays; ``wallet balance`` with a
wrong ``--rpc`` names the URL
(and on the sandbox it can be left out); a call above the default spending cap is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from payrouter.devchain import free_port
from wallets import LocalSigner

ROOT = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).parent / "payrouter"


def test_a_new_wallet_is_funded_with_dev_fund_and_then_pays(tmp_path: Path) -> None:
    state = tmp_path / "sandbox.json"
    agent = LocalSigner.generate()
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("PAYROUTER_MAX_PRICE", "PAYROUTER_SCHEME")},
        "PAYROUTER_SANDBOX_FILE": str(state),
        "PAYROUTER_PRIVATE_KEY": agent.unsafe_export_private_key(),
        "PAYROUTER_BUDGET_FILE": str(tmp_path / "budget.json"),
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(CLI), *args], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env, stdin=subprocess.DEVNULL
        )

    with subprocess.Popen(
        [str(CLI), "dev", "--json", "--port", "0", "--agents", "1"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            info = json.loads(proc.stdout.readline())
            router = info["router_url"]
            assert json.loads(state.read_text())["rpc_url"] == info["rpc_url"]
            assert "agent_private_keys" not in json.loads(state.read_text())  # the file holds no key

            broke = run("chat", "hi", "--router", router, "--max-tokens", "20")
            assert broke.returncode == 2 and "insufficient_funds" in broke.stderr, broke.stderr
            assert f".venv/bin/payrouter dev fund {agent.address}" in broke.stderr

            wrong_rpc = f"http://127.0.0.1:{free_port()}"
            balance = run("wallet", "balance", "--router", router, "--rpc", wrong_rpc)
            assert balance.returncode != 0 and "Traceback" not in balance.stderr
            assert f"cannot reach the JSON-RPC node at {wrong_rpc}" in balance.stderr

            funded = run("dev", "fund", agent.address, "2.5")
            assert funded.returncode == 0, funded.stderr
            assert "2.500000 USD Coin (2500000 atomic)" in funded.stdout and "1 ETH" in funded.stdout
            right = run("wallet", "balance", "--router", router, "--rpc", info["rpc_url"], "--json")
            assert json.loads(right.stdout)["balance"] == "2500000"
            # on the sandbox --rpc can be left out: the running sandbox says where its chain is
            found = run("wallet", "balance", "--router", router)
            assert found.returncode == 0 and f"{agent.address} holds $2.500000" in found.stdout, found.stderr
            elsewhere = run("wallet", "balance", "--router", f"http://127.0.0.1:{free_port()}")
            assert elsewhere.returncode != 0 and "cannot read the router's catalog" in elsewhere.stderr

            paid = run("chat", "hi", "--router", router, "--max-tokens", "20", "--json")
            assert paid.returncode == 0, paid.stderr
            assert int(json.loads(paid.stdout)["amount"]) > 0

            # without --max-price a call is capped at $0.10: 60,000 output tokens of claude-sonnet-4 are not
            capped = run("chat", "hi", "--router", router, "--model", "claude-sonnet-4", "--max-tokens", "60000")
            assert capped.returncode == 3 and "refused (max_per_call)" in capped.stderr, capped.stderr
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
    assert not state.exists()  # a stopped sandbox leaves no file behind
    gone = run("dev", "fund", agent.address)
    assert gone.returncode == 2 and "no sandbox is running" in gone.stderr
