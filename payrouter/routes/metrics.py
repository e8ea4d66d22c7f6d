"""``GET /metrics``: the service's Prometheus metrics (see `payrouter.metrics`)."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import Response

from payrouter.metrics.exposition import CONTENT_TYPE, refresh_gauges, render
from payrouter.services import Services
from payrouter.store import StoreError

__all__ = ["metrics_endpoint"]

log = logging.getLogger("payrouter.metrics")


async def metrics_endpoint(request: Request) -> Response:
    """The Prometheus text format; with several workers, all of them aggregated. A journal that
    cannot be read leaves its gauges at their last values rather than failing the scrape."""
    services: Services = request.state.services
    try:
        await refresh_gauges(services.journal, services.health)
    except StoreError as exc:
        log.warning("metrics: journal records not refreshed (%s)", exc)
    return Response(await render(), media_type=CONTENT_TYPE)
