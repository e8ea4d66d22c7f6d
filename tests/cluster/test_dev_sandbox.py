"""``payrouter dev --redis-cluster``: the sandbox on a Redis Cluster of its own, a paid call served
through it, and every cluster node gone after SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.integration.payments import header, offer, payment
from wallets import LocalSigner

ROOT = Path(__file__).resolve().parents[2]
CLI = Path(sys.executable).parent / "payrouter"


def _children(pid: int) -> dict[int, str]:
    """``pid``'s child processes: their command lines."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out[int(entry.name)] = cmdline
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_dev_sandbox_on_its_own_redis_cluster(tmp_path: Path) -> None:
    env = {**os.environ, "PAYROUTER_SANDBOX_FILE": str(tmp_path / "sandbox.json")}
    args = [str(CLI), "dev", "--json", "--port", "0", "--agents", "1", "--redis-cluster"]
    with subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, text=True, env=env) as proc:
        assert proc.stdout is not None
        try:
            info = json.loads(proc.stdout.readline())
            nodes = {pid for pid, cmd in _children(proc.pid).items() if "redis-server" in cmd and "[cluster]" in cmd}
            assert len(nodes) == 6
            url = f"{info['router_url']}/v1/chat/completions"
            body = {"model": "gpt-4o-mini", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
            agent = LocalSigner(info["agent_private_keys"][0])
            with httpx.Client(timeout=30) as http:
                paid = http.post(url, json=body, headers=header(payment(offer(http, url, body), agent)))
                assert paid.status_code == 200, paid.text
        finally:
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert not [pid for pid in nodes if _alive(pid)]
