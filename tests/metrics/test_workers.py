"""``payrouter serve --workers 2``: a scrape answered by either worker adds up both of them."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from payrouter.sandbox.dev import Sandbox
from tests.integration.conftest import REDIS_URL
from tests.integration.servers import CLI, free_port, server_env, stop, wait_healthy, write_config
from tests.polling import healthz_until_every_worker

from .scrape import scrape, value


@pytest.fixture(scope="module")
def two_workers(mbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("metrics-workers")
    config = write_config(mbox, folder, REDIS_URL, "requests.jsonl")
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
    sent = healthz_until_every_worker(two_workers, at_least=20)  # a new connection per request
    # whichever worker answers the scrape reports every request either of them served
    for _ in range(4):
        after = scrape(two_workers)
        counted = value(after, "payrouter_requests_total", endpoint="/healthz", status="200") - value(
            before, "payrouter_requests_total", endpoint="/healthz", status="200"
        )
        assert counted == sent
