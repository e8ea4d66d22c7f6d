"""The dev chain stops everything it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from payrouter import devchain
from payrouter.devchain import AnvilNotFoundError, DevChain, find_anvil


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); check its state
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] != "Z"


def test_stop_kills_anvil_and_frees_the_port() -> None:
    chain = DevChain.start(chain_id=4242)
    pid = chain._process.pid
    assert chain.running and chain.w3.eth.chain_id == 4242
    chain.stop()
    chain.stop()  # idempotent
    assert not _alive(pid)
    with pytest.raises(httpx.HTTPError):
        httpx.post(chain.rpc_url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []})


def test_context_manager_stops_on_error() -> None:
    with pytest.raises(RuntimeError, match="boom"), DevChain.start() as chain:
        pid = chain._process.pid
        raise RuntimeError("boom")
    assert not _alive(pid)


def test_anvil_dies_with_a_killed_parent() -> None:
    code = (
        "from payrouter.devchain import DevChain; import sys, time; c = DevChain.start(); "
        "print(c._process.pid, flush=True); time.sleep(60)"
    )
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) as parent:
        assert parent.stdout is not None
        anvil_pid = int(parent.stdout.readline())
        assert _alive(anvil_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 5
    while _alive(anvil_pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(anvil_pid)


def test_missing_anvil_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("PAYROUTER_ANVIL", str(tmp_path / "nope"))
    monkeypatch.setattr(devchain, "_REPO", tmp_path)
    with pytest.raises(AnvilNotFoundError, match="scripts/test"):
        find_anvil()
    with pytest.raises(AnvilNotFoundError):
        DevChain.start()
