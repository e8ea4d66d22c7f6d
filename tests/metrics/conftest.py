"""A sandbox and payrouter servers of its own for the metrics and request-log tests.

Two `payrouter serve` processes share the sandbox's Redis namespace, chain and upstream, one
request log file and one ``PROMETHEUS_MULTIPROC_DIR``: a scrape of either reports both.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from payrouter.sandbox.dev import Sandbox
from tests.integration.conftest import REDIS_URL, Observer
from tests.integration.servers import CLI, free_port, server_env, stop, wait_healthy, write_config
from tests.redis_keys import delete_namespace, run_token
from tests.sandbox_thread import sandbox_in_thread


@pytest.fixture(scope="session")
def mbox() -> Iterator[Sandbox]:
    """The metrics tests' own sandbox (their breakers and failures disturb no other test)."""
    namespace = f"payrouter-metrics-{run_token()}"
    try:
        with sandbox_in_thread(agents=4, redis_url=REDIS_URL, namespace=namespace) as sb:
            yield sb
    finally:
        delete_namespace(REDIS_URL, namespace)


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
    config = write_config(mbox, folder, REDIS_URL, "requests.jsonl")
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
