"""``payrouter serve --workers 2``: a scrape answered by either worker adds up both of them."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import httpx
import pytest

from payrouter.sandbox.dev import Sandbox

from .conftest import CLI, free_port, server_env, stop, wait_healthy, write_config
from .scrape import scrape, value


@pytest.fixture(scope="module")
def two_workers(mbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("metrics-workers")
    config = write_config(mbox, folder)
    port = free_port()
    log = folder / "serve.log"
    with log.open("wb") as sink:
        # no PROMETHEUS_MULTIPROC_DIR of ours: the supervisor gives its workers a fresh one
        proc = subprocess.Popen(
            [str(CLI), "serve", "--config", str(config), "--port", str(port), "--workers", "2"],
            env=server_env(mbox, None),
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log)
        yield url
    finally:
        stop([proc])


def test_scrape_adds_up_every_worker(two_workers: str) -> None:
    before = scrape(two_workers)
    pids: set[int] = set()
    sent = 0
    # a new connection per request, until both workers have answered some
    while len(pids) < 2 or sent < 20:
        assert sent < 400, f"only worker(s) {pids} answered"
        pids.add(httpx.get(f"{two_workers}/healthz", timeout=10).json()["worker"])
        sent += 1
    # whichever worker answers the scrape reports every request either of them served
    for _ in range(4):
        after = scrape(two_workers)
        counted = value(after, "payrouter_requests_total", endpoint="/healthz", status="200") - value(
            before, "payrouter_requests_total", endpoint="/healthz", status="200"
        )
        assert counted == sent
