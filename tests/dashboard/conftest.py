"""A sandbox chain and upstream, and a ``payrouter serve`` process with the dashboard turned on.

The served router is its own process, so its Prometheus registry counts only what these tests
send it; it shares the sandbox's Redis namespace (and gas wallet), whose journal holds only the
payments made here.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from payrouter.sandbox.dev import Sandbox
from pricing import PriceTable, RoutingRule
from tests.integration.servers import CLI, free_port, server_env, stop, wait_healthy, write_config
from tests.redis_keys import delete_namespace, run_token
from tests.sandbox_thread import sandbox_in_thread

REDIS_URL = "redis://127.0.0.1:6379/0"
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
    config = write_config(
        box, folder, REDIS_URL, table=table, sections=f'[dashboard]\ntoken_env = "{TOKEN_ENV}"\nrefresh_seconds = 1\n'
    )
    token = secrets.token_urlsafe(32)
    env = {**server_env(box), TOKEN_ENV: token}
    port = free_port()
    log = folder / "server.log"
    with log.open("wb") as sink:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [str(CLI), "serve", "--config", str(config), "--port", str(port)]
            + (["--workers", str(workers)] if workers > 1 else []),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    server = Served(f"http://127.0.0.1:{port}", token, proc, log)
    try:
        wait_healthy(server.url, proc, log, timeout=30)
        yield server
    finally:
        stop([proc])
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
