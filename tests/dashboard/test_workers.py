"""With ``serve --workers 2`` the dashboard adds up every worker's metrics, like ``/metrics``."""

from __future__ import annotations

import httpx

from .conftest import Served


def _healthz_count(server: Served) -> int:
    response = httpx.get(f"{server.url}/dashboard/data", headers={"Authorization": f"Bearer {server.token}"})
    assert response.status_code == 200
    rows = response.json()["current"]["requests"]
    return sum(r["count"] for r in rows if r["endpoint"] == "/healthz" and r["status"] == "200")


def test_every_worker_is_counted(plain: Served) -> None:
    before = _healthz_count(plain)
    pids: set[int] = set()
    sent = 0
    # a new connection per request, until both workers have answered some
    while len(pids) < 2 or sent < 20:
        assert sent < 400, f"only worker(s) {pids} answered"
        pids.add(httpx.get(f"{plain.url}/healthz", timeout=10).json()["worker"])
        sent += 1
    # whichever worker answers the dashboard's data reports what both of them served
    for _ in range(4):
        assert _healthz_count(plain) - before == sent
