"""The journal needs a Redis that survives restarts: `persistence_warning`, and the WARNING
``payrouter serve`` logs at start. Runs private redis-servers on free ports, killed by PID."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from payrouter.devchain import DevChain, DevToken
from payrouter.store.persistence import persistence_warning
from tests.service_config import GAS_KEY_ENV, example_table, write_config

REDIS_SERVER = "/usr/bin/redis-server"
CLI = Path(sys.executable).parent / "payrouter"
KINDS = {
    "none": ["--save", "", "--appendonly", "no"],
    "aof": ["--save", "", "--appendonly", "yes", "--appendfsync", "everysec"],
    "rdb": ["--save", "3600 1", "--appendonly", "no"],
    # managed Redis often hides CONFIG
    "hidden": ["--save", "", "--appendonly", "no", "--rename-command", "CONFIG", ""],
}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """kind -> URL of a private redis-server configured that way."""
    procs: list[subprocess.Popen[bytes]] = []
    urls = {}
    try:
        for kind, options in KINDS.items():
            port = _free_port()
            folder = tmp_path_factory.mktemp(f"redis-{kind}")
            args = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), *options]
            procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            urls[kind] = f"redis://127.0.0.1:{port}/0"
        for proc, url in zip(procs, urls.values(), strict=True):
            deadline = time.monotonic() + 5
            with redis.Redis.from_url(url, socket_connect_timeout=0.5) as client:
                while True:
                    try:
                        client.ping()
                        break
                    except redis.ConnectionError:
                        assert proc.poll() is None and time.monotonic() < deadline, (
                            f"redis-server at {url} did not start"
                        )
                        time.sleep(0.01)
        yield urls
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait(5)


def test_persistence_warning(servers: dict[str, str]) -> None:
    assert persistence_warning(servers["aof"]) is None
    assert persistence_warning(servers["rdb"]) is None
    none = persistence_warning(servers["none"])
    assert none is not None and "neither AOF (appendonly no) nor RDB snapshots (save '')" in none
    hidden = persistence_warning(servers["hidden"])
    assert hidden is not None and hidden.startswith("could not check whether Redis at 127.0.0.1:")
    # unreachable: the service's own startup check reports it
    assert persistence_warning(f"redis://127.0.0.1:{_free_port()}/0", timeout=0.5) is None


def _serve_until_ready(config: Path, env: dict[str, str], log: Path) -> str:
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [str(CLI), "serve", "--config", str(config), "--port", "0"], env=env, stdout=subprocess.DEVNULL, stderr=sink
        )
    try:
        deadline = time.monotonic() + 30
        while "payrouter ready" not in log.read_text(errors="replace"):
            assert proc.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, "payrouter serve did not start"
            time.sleep(0.05)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return log.read_text(errors="replace")


@pytest.mark.chain
def test_serve_warns_at_start_when_redis_does_not_persist(
    servers: dict[str, str], chain: DevChain, token: DevToken, tmp_path: Path
) -> None:
    table = example_table(chain.network, token.address, chain.new_account().address)
    env = {**os.environ, GAS_KEY_ENV: chain.new_account().unsafe_export_private_key()}
    configs = {}
    for kind in ("none", "aof"):
        folder = tmp_path / kind
        folder.mkdir()
        configs[kind] = write_config(folder, table, servers[kind], "payrouter-test-persistence", chain.rpc_url)
    with ThreadPoolExecutor(max_workers=2) as pool:
        logs = dict(
            zip(
                configs,
                pool.map(lambda kind: _serve_until_ready(configs[kind], env, tmp_path / f"{kind}.log"), configs),
                strict=True,
            )
        )
    warnings = [line for line in logs["none"].splitlines() if " WARNING payrouter.store: " in line]
    assert len(warnings) == 1 and "neither AOF" in warnings[0], logs["none"]
    assert "payrouter.store" not in logs["aof"], logs["aof"]
