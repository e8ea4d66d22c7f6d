"""What the paid handler notes about a served call for splits and feedback (no I/O here)."""

from __future__ import annotations

from starlette.types import Scope

from payrouter import metrics
from payrouter.feedback.record import FeedbackRecorder
from payrouter.routing.engine import prompt_text
from payrouter.services import Services
from payrouter.x402.call import PaidCall

__all__ = ["FEEDBACK_STATE", "served"]

# the lifespan state key of the app's `FeedbackRecorder`
FEEDBACK_STATE = "feedback"


def served(scope: Scope, services: Services, call: PaidCall, completion_id: str, seconds: float) -> None:
    """A paid call was answered as ``completion_id`` in ``seconds``: count its split arm (the
    rule and arm come with its sealed quote) and queue its record for feedback."""
    decision = call.route.decision
    model = call.answered_by or decision.model
    if decision.arm:
        metrics.SPLIT_CALLS.labels(rule=decision.rule, arm=decision.arm, model=model).inc()
        metrics.SPLIT_SECONDS.labels(rule=decision.rule, arm=decision.arm).observe(seconds)
        metrics.SPLIT_REVENUE.labels(rule=decision.rule, arm=decision.arm).inc(call.charge(services.table))
    recorder = (scope.get("state") or {}).get(FEEDBACK_STATE)
    if isinstance(recorder, FeedbackRecorder):
        entry = services.table.by_id.get(model)
        router_name = (entry.router_name or "") if entry is not None else ""
        recorder.note(
            completion_id, call.payer, model, router_name, decision.rule, decision.arm, prompt_text(call.request)
        )
