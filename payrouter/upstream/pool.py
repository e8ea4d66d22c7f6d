"""Calls the routed model, failing over to the decision's fallbacks that fit inside the quote."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from payrouter.routing import RouteDecision
from payrouter.upstream.openai import Completion, OpenAICompatible, UpstreamError, UpstreamStream
from pricing import PriceTable, PricingError, quote_route

__all__ = ["Answer", "UpstreamPool"]


@dataclass(frozen=True, slots=True)
class Answer:
    """A completion and the catalog model that produced it."""

    model: str
    completion: Completion
    attempts: int


class UpstreamPool:
    """One adapter per provider name (the price table's ``provider`` field)."""

    def __init__(self, adapters: Mapping[str, OpenAICompatible]) -> None:
        self._adapters = dict(adapters)

    def missing_providers(self, table: PriceTable) -> list[str]:
        """Providers the table names that have no adapter configured."""
        return sorted({m.provider for m in table.models} - self._adapters.keys())

    def _candidates(self, decision: RouteDecision, table: PriceTable, paid: int) -> list[str]:
        out = [decision.model]
        for model_id in decision.fallbacks:
            # A fallback is only worth trying if what the client paid covers it.
            try:
                if quote_route(table, model_id, decision.input_tokens, decision.output_tokens).amount <= paid:
                    out.append(model_id)
            except PricingError:
                continue
        return out

    async def stream(
        self, body: dict[str, Any], decision: RouteDecision, table: PriceTable, paid: int
    ) -> tuple[str, UpstreamStream, int]:
        """Open a stream on the first candidate that produces a first chunk.

        Returns ``(catalog model, stream, attempts)``. Failover stops at the first chunk: after
        that, bytes have reached the client.

        Raises:
            UpstreamError: every candidate failed before its first chunk.
        """
        last: UpstreamError | None = None
        for attempt, model_id in enumerate(self._candidates(decision, table, paid), start=1):
            model = table.model(model_id)
            adapter = self._adapters.get(model.provider)
            if adapter is None:
                last = UpstreamError(f"no provider {model.provider!r} configured")
                continue
            try:
                return model_id, await adapter.stream(body, model.upstream_model, decision.output_tokens), attempt
            except UpstreamError as exc:
                if not exc.retryable:
                    raise
                last = exc
        assert last is not None
        raise last

    async def complete(self, body: dict[str, Any], decision: RouteDecision, table: PriceTable, paid: int) -> Answer:
        """Run the request on the first candidate that answers.

        Raises:
            UpstreamError: every candidate failed (the last error), or a non-retryable
                error (the request itself is bad; another model would refuse it too).
        """
        last: UpstreamError | None = None
        candidates = self._candidates(decision, table, paid)
        for attempt, model_id in enumerate(candidates, start=1):
            model = table.model(model_id)
            adapter = self._adapters.get(model.provider)
            if adapter is None:
                last = UpstreamError(f"no provider {model.provider!r} configured", retryable=True)
                continue
            try:
                completion = await adapter.chat(body, model.upstream_model, decision.output_tokens)
            except UpstreamError as exc:
                if not exc.retryable:
                    raise
                last = exc
                continue
            return Answer(model=model_id, completion=completion, attempts=attempt)
        assert last is not None
        raise last
