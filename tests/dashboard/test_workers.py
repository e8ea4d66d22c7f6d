"""With ``serve --workers 2`` the dashboard adds up every worker's metrics, like ``/metrics``."""

from __future__ import annotations

import httpx

from tests.polling import healthz_until_every_worker

from .conftest import Served


def _healthz_count(server: Served) -> int:
    response = httpx.get(f"{server.url}/dashboard/data", headers={"Authorization": f"Bearer {server.token}"})
    assert response.status_code == 200
    rows = response.json()["current"]["requests"]
    return sum(r["count"] for r in rows if r["endpoint"] == "/healthz" and r["status"] == "200")


def test_every_worker_is_counted(plain: Served) -> None:
    before = _healthz_count(plain)
    sent = healthz_until_every_worker(plain.url, at_least=20)  # a new connection per request
    # whichever worker answers the dashboard's data reports what both of them served
    for _ in range(4):
        assert _healthz_count(plain) - before == sent
