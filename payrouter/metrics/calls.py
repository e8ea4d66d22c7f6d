"""What one request to a paid endpoint did, collected as it runs and counted when it ends.

The layers a paid request passes through each note what only they know on the request's
`Observation` (kept in the ASGI scope): the gate its scheme or refusal, the scheme the journal
record that holds the payment, the handler the completion id and the model's time. When the
response is done, `finish` turns it into metric increments and one request-log event. All of
it is in memory: no await, no store round trip is added to the paid path.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.types import Scope

from payrouter import metrics
from payrouter.journal import PaymentRecord, State
from payrouter.metrics import tracing
from payrouter.quoting import PricedRoute
from payrouter.request_log import RequestLog
from payrouter.routing import RouteDecision
from payrouter.x402.call import SCOPE_KEY, PaidCall

__all__ = [
    "OBSERVATION_KEY",
    "Observation",
    "answered",
    "committed",
    "deposit_sent",
    "finish",
    "holds",
    "model_time",
    "quoted",
    "reason_kind",
    "refused",
    "scheme_chosen",
]

OBSERVATION_KEY = "payrouter.observation"

# Why a served call charged nothing, when the call (not the payment) failed.
_CALL_FAILURES = frozenset({"upstream_failed", "request_failed", "client_gone"})


class _Holder(Protocol):
    @property
    def record(self) -> PaymentRecord: ...


@dataclass(slots=True)
class Observation:
    """One request, as far as it has gone.

    Attributes:
        endpoint: the request path.
        started: ``time.perf_counter()`` when it arrived.
        status: the response status (0 until the response starts).
        scheme: the payment scheme the request named.
        holder: holds the payment's latest journal record (``exact``: the `PaymentAttempt`).
        record: the committed journal record (``batch-settlement`` voucher).
        deposit_tx: a channel deposit sent for this request.
        request_id: the completion id the client received.
        upstream_ms: time spent in the model call(s), failovers included.
        refusal: ``(reason, message, payer)`` of a refused payment.
        offered: the route a refused request was offered instead.
        digest: the request digest (what its quote was issued for).
    """

    endpoint: str
    started: float
    status: int = 0
    scheme: str = ""
    holder: _Holder | None = None
    record: PaymentRecord | None = None
    deposit_tx: str = ""
    request_id: str = ""
    upstream_ms: float | None = None
    refusal: tuple[str, str, str | None] | None = None
    offered: PricedRoute | None = None
    digest: str = ""


def _get(scope: Scope) -> Observation | None:
    obs = scope.get(OBSERVATION_KEY)
    return obs if isinstance(obs, Observation) else None


def scheme_chosen(scope: Scope, scheme: str, digest: str = "") -> None:
    """The gate picked ``scheme`` for the payment of the request ``digest``."""
    if (obs := _get(scope)) is not None:
        obs.scheme = scheme
        obs.digest = digest


def holds(scope: Scope, holder: _Holder) -> None:
    """``holder.record`` will be the payment's journal record when the request ends."""
    if (obs := _get(scope)) is not None:
        obs.holder = holder


def committed(scope: Scope, record: PaymentRecord) -> None:
    """The payment's final journal record (a charged voucher)."""
    if (obs := _get(scope)) is not None:
        obs.record = record


def deposit_sent(scope: Scope, tx: str) -> None:
    """A channel deposit was sent on chain for this request (``""``: it was already there)."""
    if (obs := _get(scope)) is not None:
        obs.deposit_tx = tx


def answered(scope: Scope, request_id: str) -> None:
    """The handler answered with the completion id ``request_id`` (what the client received)."""
    if (obs := _get(scope)) is not None:
        obs.request_id = request_id


def model_time(scope: Scope, upstream_ms: float) -> None:
    """The model call(s), failovers included, took ``upstream_ms``."""
    if (obs := _get(scope)) is not None:
        obs.upstream_ms = upstream_ms


def refused(scope: Scope, scheme: str | None, reason: str, message: str, payer: str | None, offer: PricedRoute) -> None:
    """The gate refused the payment (``reason``: the x402 error code) and offered ``offer``."""
    if (obs := _get(scope)) is not None:
        obs.scheme = scheme or ""
        obs.refusal = (reason, message, payer)
        obs.offered = offer


def reason_kind(decision: RouteDecision) -> str:
    """The low-cardinality kind of a decision's reason: ``split``, ``named``, ``rule`` or ``strategy``."""
    if getattr(decision, "arm", "") == "trial":
        return "split"
    if decision.strategy == "named":
        return "named"
    if decision.reason.startswith("rule"):
        return "rule"
    return "strategy"


def _provider(scope: Scope, model: str) -> str | None:
    """The price table's provider of ``model`` (``gen_ai.system``), when known."""
    services = (scope.get("state") or {}).get("services")
    try:
        return str(services.table.model(model).provider)  # type: ignore[union-attr]
    except Exception:  # no services in this scope, or a model the table no longer has
        return None


def _route_fields(decision: RouteDecision) -> dict[str, Any]:
    return {
        "strategy": decision.strategy,
        "reason": decision.reason,
        "reason_kind": reason_kind(decision),
        "rule": str(getattr(decision, "rule", "") or ""),
        "arm": str(getattr(decision, "arm", "") or ""),
        "routed_model": decision.model,
        "candidates": [
            {"model": c.model, "quality_bp": c.quality, "price": c.price, "latency_ms": c.latency_ms}
            for c in decision.candidates
        ],
    }


def finish(scope: Scope, obs: Observation, request_log: RequestLog | None) -> None:
    """Count the request's payment in the metrics and write its request-log event.

    Requests that neither served a paid call nor refused a payment (unpaid 402s, bad
    requests, replays of an answered payment) add nothing here.
    """
    paid = scope.get(SCOPE_KEY)
    if isinstance(paid, PaidCall):
        _served(scope, obs, paid, request_log)
    elif obs.refusal is not None:
        _refused(obs, request_log)


def _served(scope: Scope, obs: Observation, paid: PaidCall, request_log: RequestLog | None) -> None:
    record = obs.holder.record if obs.holder is not None else obs.record
    # the sealed quote carries the candidates, rule and arm the engine decided with
    decision = paid.route.decision
    scheme = record.scheme if record is not None else obs.scheme
    model = (record.answered_by if record is not None else "") or paid.answered_by or decision.model
    charged = cost = 0
    refusal: str | None = None
    if record is not None:
        asset = record.asset
        if record.state in (State.SETTLED, State.PENDING):
            metrics.child(metrics.PAID_CALLS, scheme, model).inc()
        if record.state == State.SETTLED and record.charged:
            charged = record.charged
            metrics.child(metrics.REVENUE, model, asset).inc(charged)
        if record.answered_by:  # the model answered: it cost us, whether or not the payment then moved
            cost = record.upstream_cost
            metrics.child(metrics.UPSTREAM_COST, model, asset).inc(cost)
        if charged or cost:
            metrics.child(metrics.MARGIN, model, asset).inc(charged - cost)
        if record.state in (State.RELEASED, State.OWED):
            refusal = record.reason or "released"
            if refusal not in _CALL_FAILURES:  # the payment, not the call, failed (a settlement refused)
                metrics.child(metrics.REFUSALS, scheme, refusal).inc()
    elif obs.status >= 400:
        refusal = "upstream_failed" if obs.status >= 500 else "request_failed"
    if tracing.enabled():
        tracing.record_call(
            scope.get("headers") or [],
            obs.started,
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.system": _provider(scope, model),
                "gen_ai.request.model": decision.model,
                "gen_ai.response.model": model,
                "gen_ai.response.id": obs.request_id or None,
                "gen_ai.request.max_tokens": decision.output_tokens,
                "gen_ai.usage.input_tokens": paid.input_tokens,
                "gen_ai.usage.output_tokens": paid.output_tokens,
                "http.response.status_code": obs.status,
                "payrouter.payer": paid.payer,
                "payrouter.payment.scheme": scheme,
                "payrouter.payment.state": record.state if record is not None else None,
                "payrouter.payment.price": paid.quoted,
                "payrouter.payment.charged": charged,
                "payrouter.payment.upstream_cost": cost,
                "payrouter.payment.tx": (record.tx if record is not None else "") or obs.deposit_tx or None,
                "payrouter.payment.refusal": refusal,
                "payrouter.route.strategy": decision.strategy,
                "payrouter.route.reason_kind": reason_kind(decision),
                "payrouter.route.rule": decision.rule or None,
                "payrouter.route.arm": decision.arm or None,
            },
            decision.model,
            obs.status >= 500,
        )
    if request_log is None or not request_log.enabled:
        return
    request_log.write(
        {
            "ts": time.time(),
            "event": "call",
            "request_id": obs.request_id,
            "payer": paid.payer,
            "endpoint": obs.endpoint,
            "status": obs.status,
            "scheme": scheme,
            "model": model,
            **_route_fields(decision),
            "price": paid.quoted,
            "charged": charged,
            "cost": cost,
            "input_tokens": paid.input_tokens,
            "output_tokens": paid.output_tokens,
            "latency_ms": round((time.perf_counter() - obs.started) * 1000, 3),
            "upstream_ms": None if obs.upstream_ms is None else round(obs.upstream_ms, 3),
            # no record of this request's own: a payment presented again, answered from the journal
            "state": record.state if record is not None else ("replay" if obs.status < 400 else ""),
            "tx": (record.tx if record is not None else "") or obs.deposit_tx or None,
            "refusal": refusal,
        }
    )


def _refused(obs: Observation, request_log: RequestLog | None) -> None:
    assert obs.refusal is not None
    reason, message, payer = obs.refusal
    metrics.child(metrics.REFUSALS, obs.scheme or "none", reason).inc()
    if request_log is None or not request_log.enabled:
        return
    offered = obs.offered
    event: dict[str, Any] = {
        "ts": time.time(),
        "event": "refusal",
        "request_id": "",
        "payer": payer or "",
        "endpoint": obs.endpoint,
        "status": obs.status,
        "scheme": obs.scheme,
        "model": offered.decision.model if offered is not None else "",
    }
    if offered is not None:
        event.update(_route_fields(offered.decision))
        event["price"] = offered.requirements.amount
    event.update(
        charged=0,
        cost=0,
        latency_ms=round((time.perf_counter() - obs.started) * 1000, 3),
        tx=None,
        refusal=reason,
        message=message,
    )
    request_log.write(event)


def quoted(endpoint: str, decision: RouteDecision, schemes: Iterable[str]) -> None:
    """The gate routed and priced a request and offers it under ``schemes`` (a 402)."""
    metrics.child(metrics.ROUTING_DECISIONS, decision.strategy, decision.model, reason_kind(decision)).inc()
    for scheme in schemes:
        metrics.child(metrics.QUOTES, endpoint, scheme).inc()
