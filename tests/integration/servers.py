"""`payrouter serve` processes beside the sandbox: on its chain, upstream and Redis namespace."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from payrouter.sandbox.dev import Sandbox
from pricing import PriceTable
from tests.price_toml import price_table_toml

CLI = Path(sys.executable).parent / "payrouter"


@dataclass
class Servers:
    """``payrouter serve`` processes on one config."""

    urls: list[str]
    procs: list[subprocess.Popen[bytes]]
    config: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _log_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-6000:]


def write_config(
    box: Sandbox,
    folder: Path,
    redis_url: str,
    request_log: str | None = None,
    table: PriceTable | None = None,
    sections: str = "",
) -> Path:
    """A service config serving ``table`` (the sandbox's by default) on its chain, namespace and
    upstream, on ``redis_url`` (claimer and reconciler passes are the tests' own); ``sections``
    are more TOML sections."""
    table = table or box.table
    (folder / "prices.toml").write_text(price_table_toml(table.model_dump(mode="json")))
    providers = "\n".join(
        f'[providers.{p}]\nbase_url = "{box.upstream_url}"\nkind = "anthropic"'
        if p == "anthropic"
        else f'[providers.{p}]\nbase_url = "{box.upstream_url}/v1"'
        for p in sorted({m.provider for m in table.models})
    )
    log = f'request_log = "{request_log}"\n' if request_log else ""
    path = folder / "payrouter.toml"
    path.write_text(
        f'price_table = "prices.toml"\nredis_url = "{redis_url}"\nnamespace = "{box.namespace}"\n{log}'
        "reconcile_interval = 0\n"
        f'[facilitator]\nmode = "local"\nrpc_url = "{box.chain.rpc_url}"\ngas_key_env = "TEST_GAS_KEY"\n'
        f'[channels]\nauthorizer_key_env = "TEST_AUTHORIZER_KEY"\nclaim_poll = 0\n{sections}{providers}\n'
    )
    return path


def server_env(box: Sandbox, metrics_dir: Path | None = None) -> dict[str, str]:
    """The environment of a server on ``write_config``'s config (its keys; a multiprocess
    metrics directory when given)."""
    assert box.authorizer is not None
    env = {
        **os.environ,
        "TEST_GAS_KEY": box.gas_wallet.unsafe_export_private_key(),
        "TEST_AUTHORIZER_KEY": box.authorizer.unsafe_export_private_key(),
        "PYTHONFAULTHANDLER": "1",  # SIGABRT makes a stuck server print where it is
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if metrics_dir is not None:
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    return env


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    """Until ``url`` answers ``/healthz`` (the server's log in the failure if it dies or never does)."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, _log_tail(log)
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "server did not become healthy:\n" + _log_tail(log)
        time.sleep(0.05)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM, then a kill for whatever has not stopped within 15 s."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextmanager
def serve_beside(box: Sandbox, folder: Path, redis_url: str, count: int = 1) -> Iterator[Servers]:
    """``count`` servers sharing the sandbox's chain (local facilitator, its gas wallet and
    channel authorizer), upstream and namespace, on ``redis_url``; healthy when yielded, and
    stopped with SIGTERM afterwards (a server that will not stop prints where it is stuck and
    fails the test)."""
    config = write_config(box, folder, redis_url)
    env = server_env(box)
    ports = [free_port() for _ in range(count)]
    # logs go to files, not pipes nobody reads (a full pipe would block the server)
    logs = [folder / f"server-{port}.log" for port in ports]
    procs = []
    for port, log in zip(ports, logs, strict=True):
        with log.open("wb") as sink:  # the child keeps its own descriptor
            procs.append(
                subprocess.Popen(
                    [str(CLI), "serve", "--config", str(config), "--port", str(port)],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=sink,
                )
            )
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        for url, proc, log in zip(urls, procs, logs, strict=True):
            wait_healthy(url, proc, log, timeout=30)
        yield Servers(urls, procs, config)
    finally:
        for proc in procs:
            proc.terminate()
        for proc, log in zip(procs, logs, strict=True):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGABRT)
                proc.wait(10)
                pytest.fail(f"payrouter serve did not stop on SIGTERM within 10 s:\n{_log_tail(log)}")
