"""OpenTelemetry spans of paid calls (the ``otel`` extra): GenAI attributes, the caller's trace."""

from __future__ import annotations

import secrets

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from payrouter.metrics import tracing
from payrouter.sandbox.dev import Sandbox
from tests.integration.payments import header, offer, payment
from tests.polling import wait_until


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    """This process's tracer provider, exporting to memory (the sandbox's router runs here)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    assert tracing.enabled()
    return exporter


def test_paid_call_is_a_genai_span_in_the_callers_trace(mbox: Sandbox, spans: InMemorySpanExporter) -> None:
    url = f"{mbox.router_url}/v1/chat/completions"
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    traceparent = {"traceparent": f"00-{trace_id}-{parent_id}-01"}
    body = {"model": "gpt-4o-mini", "max_tokens": 20, "messages": [{"role": "user", "content": secrets.token_hex(5)}]}
    with httpx.Client(timeout=30) as http:
        o = offer(http, url, body)
        response = http.post(url, json=body, headers={**header(payment(o, mbox.agents[1])), **traceparent})
    assert response.status_code == 200, response.text
    completion = response.json()

    def finished() -> list[ReadableSpan]:
        return [
            s
            for s in spans.get_finished_spans()
            if s.attributes and s.attributes.get("gen_ai.response.id") == completion["id"]
        ]

    (span,) = wait_until(finished, "the call's span")
    attributes = dict(span.attributes or {})
    assert span.name == "chat gpt-4o-mini"
    assert attributes["gen_ai.operation.name"] == "chat" and attributes["gen_ai.system"] == "openai"
    assert attributes["gen_ai.request.model"] == attributes["gen_ai.response.model"] == "gpt-4o-mini"
    assert attributes["gen_ai.usage.input_tokens"] == completion["usage"]["prompt_tokens"]
    assert attributes["gen_ai.usage.output_tokens"] == completion["usage"]["completion_tokens"]
    assert attributes["gen_ai.request.max_tokens"] == 20
    assert attributes["payrouter.payment.scheme"] == "exact" and attributes["payrouter.payment.state"] == "settled"
    assert attributes["payrouter.payment.charged"] == int(completion["usage"]["payrouter"]["charged"])
    assert str(attributes["payrouter.payment.tx"]).startswith("0x")
    assert attributes["payrouter.payer"] == mbox.agents[1].address
    context, parent = span.context, span.parent
    assert context is not None and parent is not None
    assert f"{context.trace_id:032x}" == trace_id and f"{parent.span_id:016x}" == parent_id
    assert span.start_time is not None and span.end_time is not None and span.end_time > span.start_time
