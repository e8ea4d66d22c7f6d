"""The operator dashboard: what ``GET /dashboard`` shows, where its data comes from, who may see it.

- `payrouter.dashboard.auth`: the operator token and the session cookie it is exchanged for;
- `payrouter.dashboard.current`: this instance's Prometheus registry (the data of ``/metrics``);
- `payrouter.dashboard.history`: time series, per-model and per-payer sums from the payment
  journal (all instances, across restarts), bounded in window and records read;
- `payrouter.dashboard.data`: the JSON document one refresh of the page draws;
- ``assets/``: the page, its login form, script and style sheet (no external resources).

The routes are in `payrouter.routes.dashboard`.
"""

from payrouter.dashboard.auth import COOKIE, DashboardAuth
from payrouter.dashboard.data import dashboard_data
from payrouter.dashboard.history import WINDOWS, HistoryCache, Window

__all__ = ["COOKIE", "WINDOWS", "DashboardAuth", "HistoryCache", "Window", "dashboard_data"]
