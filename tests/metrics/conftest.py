"""A sandbox and payrouter servers of its own for the metrics and request-log tests.

Two `payrouter serve` processes share the sandbox's Redis namespace, chain and upstream, one
request log file and one ``PROMETHEUS_MULTIPROC_DIR``: a scrape of either reports both.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from payrouter.sandbox.dev import Sandbox
from tests.integration.conftest import REDIS_URL, Observer
from tests.price_toml import price_table_toml
from tests.redis_keys import delete_namespace, run_token
from tests.sandbox_thread import sandbox_in_thread

CLI = Path(sys.executable).parent / "payrouter"


@pytest.fixture(scope="session")
def mbox() -> Iterator[Sandbox]:
    """The metrics tests' own sandbox (their breakers and failures disturb no other test)."""
    namespace = f"payrouter-metrics-{run_token()}"
    try:
        with sandbox_in_thread(agents=4, redis_url=REDIS_URL, namespace=namespace) as sb:
            yield sb
    finally:
        delete_namespace(REDIS_URL, namespace)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_config(box: Sandbox, folder: Path, request_log: str = "requests.jsonl") -> Path:
    """A service config serving ``box``'s table on its chain, Redis namespace and upstream."""
    (folder / "prices.toml").write_text(price_table_toml(box.table.model_dump(mode="json")))
    providers = "\n".join(
        f'[providers.{p}]\nbase_url = "{box.upstream_url}"\nkind = "anthropic"'
        if p == "anthropic"
        else f'[providers.{p}]\nbase_url = "{box.upstream_url}/v1"'
        for p in sorted({m.provider for m in box.table.models})
    )
    path = folder / "payrouter.toml"
    path.write_text(
        f'price_table = "prices.toml"\nredis_url = "{REDIS_URL}"\nnamespace = "{box.namespace}"\n'
        f'request_log = "{request_log}"\n'
        f'[facilitator]\nmode = "local"\nrpc_url = "{box.chain.rpc_url}"\ngas_key_env = "TEST_GAS_KEY"\n'
        f'[channels]\nauthorizer_key_env = "TEST_AUTHORIZER_KEY"\nclaim_poll = 0\n{providers}\n'
    )
    return path


def server_env(box: Sandbox, metrics_dir: Path | None) -> dict[str, str]:
    assert box.authorizer is not None
    env = {
        **os.environ,
        "TEST_GAS_KEY": box.gas_wallet.unsafe_export_private_key(),
        "TEST_AUTHORIZER_KEY": box.authorizer.unsafe_export_private_key(),
        "PYTHONFAULTHANDLER": "1",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if metrics_dir is not None:
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    return env


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, log.read_text(errors="replace")[-6000:]
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "server did not become healthy:\n" + log.read_text(errors="replace")[-6000:]
        time.sleep(0.05)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class Servers:
    """Two payrouter processes sharing a request log and a multiprocess metrics directory."""

    urls: list[str]
    request_log: Path
    metrics_dir: Path
    config: Path


@pytest.fixture(scope="session")
def servers(mbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    folder = tmp_path_factory.mktemp("metrics-servers")
    metrics_dir = folder / "prometheus"
    metrics_dir.mkdir()
    config = write_config(mbox, folder)
    env = server_env(mbox, metrics_dir)
    ports = [free_port(), free_port()]
    logs = [folder / f"server-{port}.log" for port in ports]
    procs = []
    try:
        for port, log in zip(ports, logs, strict=True):
            with log.open("wb") as sink:
                procs.append(
                    subprocess.Popen(
                        [str(CLI), "serve", "--config", str(config), "--port", str(port)],
                        env=env,
                        stdout=subprocess.DEVNULL,
                        stderr=sink,
                    )
                )
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        for url, proc, log in zip(urls, procs, logs, strict=True):
            wait_healthy(url, proc, log)
        yield Servers(urls, folder / "requests.jsonl", metrics_dir, config)
    finally:
        stop(procs)


@pytest.fixture
def mhttp() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:
        yield client


@pytest.fixture
def mobserver(mbox: Sandbox, mhttp: httpx.Client) -> Iterator[Observer]:
    obs = Observer(mbox, mhttp)
    yield obs
    obs.control(
        fail_models=[], fail_next=0, fail_status=500, delay_ms=0, chunk_delay_ms=0, break_after=None, break_models=[], retry_after=None,
        context_limit=None, malformed=False,
    )  # fmt: skip
