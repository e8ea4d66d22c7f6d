"""OpenTelemetry traces of paid calls (GenAI semantic conventions), with the ``otel`` extra.

A span per paid call, ``chat {model}``, is made when the call has been answered, from what its
`Observation` collected, with the times it ran: nothing is added while the call runs. Spans go
to the process's OpenTelemetry tracer provider, which the operator configures (e.g. by running
``opentelemetry-instrument payrouter serve ...`` with ``OTEL_*`` variables). Without the extra
installed, or with no provider configured, this does nothing.

Attributes: ``gen_ai.operation.name`` (``chat``), ``gen_ai.system`` (the provider name of the
price table), ``gen_ai.request.model`` (routed), ``gen_ai.response.model`` (answered),
``gen_ai.response.id``, ``gen_ai.request.max_tokens`` (the output budget bought),
``gen_ai.usage.input_tokens``/``output_tokens``, ``http.response.status_code``, and payrouter's
own: ``payrouter.payment.scheme``/``state``/``price``/``charged``/``upstream_cost``/``tx``,
``payrouter.route.strategy``/``reason_kind``/``rule``/``arm``, ``payrouter.payer``. A
``traceparent`` header on the request makes the span its child.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError:  # the otel extra is not installed
    trace = None  # type: ignore[assignment]

__all__ = ["enabled", "record_call"]

_TRACER_NAME = "payrouter"


def enabled() -> bool:
    """A tracer provider is configured (spans would go somewhere)."""
    return trace is not None and not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def record_call(
    headers: list[tuple[bytes, bytes]], started: float, attributes: Mapping[str, Any], model: str, error: bool
) -> None:
    """Record a paid call that began at ``started`` (``time.perf_counter()``) and ends now.

    ``attributes`` with a None value are left out.
    """
    if not enabled():
        return
    carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers if k in (b"traceparent", b"tracestate")}
    context = propagate.extract(carrier) if carrier else None
    now_ns = time.time_ns()
    start_ns = now_ns - int((time.perf_counter() - started) * 1e9)
    tracer = trace.get_tracer(_TRACER_NAME)
    span = tracer.start_span(
        f"chat {model}",
        context=context,
        kind=SpanKind.SERVER,
        start_time=start_ns,
        attributes={k: v for k, v in attributes.items() if v is not None},
    )
    if error:
        span.set_status(Status(StatusCode.ERROR))
    span.end(end_time=now_ns)
