"""ASGI middleware counting every HTTP request by endpoint and status, and closing each paid
request's `Observation` (its payment's metrics and request-log line) once it is answered."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from payrouter import metrics
from payrouter.metrics.calls import OBSERVATION_KEY, Observation, finish
from payrouter.request_log import RequestLog

__all__ = ["REQUEST_LOG_STATE", "RequestMetrics"]

log = logging.getLogger("payrouter.metrics")

# where the lifespan keeps the app's `RequestLog` (``scope["state"]``, ``request.state``)
REQUEST_LOG_STATE = "request_log"


class RequestMetrics:
    """Counts ``payrouter_requests_total{endpoint, status}``.

    Args:
        app: the app behind.
        paths: the app's route paths, read when the first request comes (so routes added
            after the middleware was declared count too); any other path is ``other``, so a
            scanner probing random URLs cannot grow the label set.
        paid_paths: paths whose requests carry an `Observation` for the payment gate to fill.
    """

    def __init__(
        self,
        app: ASGIApp,
        paths: Iterable[str] = (),
        paid_paths: frozenset[str] = frozenset({"/v1/chat/completions", "/v1/messages"}),
    ) -> None:
        self.app = app
        self._paths_source = paths
        self._paths: frozenset[str] | None = None
        self.paid_paths = paid_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._paths is None:
            self._paths = frozenset(self._paths_source)
        path = scope["path"]
        endpoint = path if path in self._paths else "other"
        obs = Observation(endpoint, time.perf_counter())
        if path in self.paid_paths and scope["method"] == "POST":
            scope[OBSERVATION_KEY] = obs

        async def watched(message: Message) -> None:
            if message["type"] == "http.response.start":
                obs.status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            metrics.child(metrics.REQUESTS, endpoint, str(obs.status or 500)).inc()
            if OBSERVATION_KEY in scope:
                state = scope.get("state") or {}
                request_log = state.get(REQUEST_LOG_STATE)
                try:
                    finish(scope, obs, request_log if isinstance(request_log, RequestLog) else None)
                except Exception:  # the answer is out; bookkeeping must never turn it into an error
                    log.exception("metrics: could not account for a paid request")
