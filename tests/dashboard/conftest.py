"""A sandbox chain and upstream, and a ``payrouter serve`` process with the dashboard turned on.

The served router is its own process, so its Prometheus registry counts only what these tests
send it; it shares the sandbox's Redis namespace (and gas wallet), whose journal holds only the
payments made here.
"""

from __future__ import annotations

import os
import secrets
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
from pricing import PriceTable, RoutingRule
from tests.price_toml import price_table_toml
from tests.redis_keys import delete_namespace, run_token
from tests.sandbox_thread import sandbox_in_thread

REDIS_URL = "redis://127.0.0.1:6379/0"
CLI = Path(sys.executable).parent / "payrouter"
TOKEN_ENV = "TEST_DASHBOARD_TOKEN"
CANARY_WORD = "canary-probe"
CANARY_CONTROL = "gpt-4o-mini"
CANARY_TRIAL = "claude-3-5-haiku"
CANARY_SHARE = 50


@dataclass
class Served:
    """The dashboard-enabled router: its URL, token, process and log."""

    url: str
    token: str
    proc: subprocess.Popen[bytes]
    log: Path

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="package")
def box() -> Iterator[Sandbox]:
    """anvil, the dev token, the test upstream (and a router without a dashboard) on Redis."""
    namespace = f"payrouter-dash-{run_token()}"
    try:
        with sandbox_in_thread(agents=3, redis_url=REDIS_URL, namespace=namespace) as sb:
            yield sb
    finally:
        delete_namespace(REDIS_URL, namespace)


@contextmanager
def _serve(box: Sandbox, folder: Path, table: PriceTable, workers: int = 1) -> Iterator[Served]:
    """``payrouter serve`` of ``table`` on the sandbox's chain, upstream and namespace, dashboard on (1 s refresh)."""
    (folder / "prices.toml").write_text(price_table_toml(table.model_dump(mode="json")))
    providers = "\n".join(
        f'[providers.{p}]\nbase_url = "{box.upstream_url}/v1"' for p in sorted({m.provider for m in table.models})
    )
    (folder / "payrouter.toml").write_text(
        f'price_table = "prices.toml"\nredis_url = "{REDIS_URL}"\nnamespace = "{box.namespace}"\n'
        f'[facilitator]\nmode = "local"\nrpc_url = "{box.chain.rpc_url}"\ngas_key_env = "TEST_GAS_KEY"\n'
        f'[channels]\nauthorizer_key_env = "TEST_AUTHORIZER_KEY"\nclaim_poll = 0\n'
        f'[dashboard]\ntoken_env = "{TOKEN_ENV}"\nrefresh_seconds = 1\n{providers}\n'
    )
    assert box.authorizer is not None
    token = secrets.token_urlsafe(32)
    env = {
        **os.environ,
        "TEST_GAS_KEY": box.gas_wallet.unsafe_export_private_key(),
        "TEST_AUTHORIZER_KEY": box.authorizer.unsafe_export_private_key(),
        TOKEN_ENV: token,
        "PYTHONFAULTHANDLER": "1",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    port = _free_port()
    log = folder / "server.log"
    with log.open("wb") as sink:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [str(CLI), "serve", "--config", str(folder / "payrouter.toml"), "--port", str(port)]
            + (["--workers", str(workers)] if workers > 1 else []),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    server = Served(f"http://127.0.0.1:{port}", token, proc, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, server.log_tail()
            try:
                if httpx.get(f"{server.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not become healthy"
            time.sleep(0.05)
        yield server
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    assert token not in server.log_tail(), "the dashboard token was logged"


@pytest.fixture(scope="package")
def served(box: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The router the tests pay: the sandbox's table with a canary rule first (`CANARY_WORD` in
    an ``auto`` request: control `CANARY_CONTROL`, `CANARY_SHARE`% to `CANARY_TRIAL`)."""
    rule = RoutingRule(name="canary", keywords=[CANARY_WORD], model=CANARY_CONTROL, split={CANARY_TRIAL: CANARY_SHARE})
    routing = box.table.routing.model_copy(update={"rules": [rule, *box.table.routing.rules]})
    with _serve(box, tmp_path_factory.mktemp("dashboard"), box.table.model_copy(update={"routing": routing})) as s:
        yield s


@pytest.fixture(scope="package")
def plain(box: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A router on the sandbox's table as it is (no split rule), which nobody pays, run as
    ``payrouter serve --workers 2`` (its supervisor gives the workers a shared
    PROMETHEUS_MULTIPROC_DIR)."""
    with _serve(box, tmp_path_factory.mktemp("dashboard-plain"), box.table, workers=2) as s:
        yield s
