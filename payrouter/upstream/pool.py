"""Calls the routed model, failing over to the decision's fallbacks that fit inside the quote."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from payrouter import metrics
from payrouter.routing import RouteDecision
from payrouter.upstream.health import HealthTracker
from payrouter.upstream.openai import Completion, UpstreamError, UpstreamStream
from payrouter.upstream.provider import Provider
from pricing import ModelPrice, PriceTable, PricingError, quote_route

__all__ = ["Answer", "UpstreamPool"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Answer:
    """A completion and the catalog model that produced it."""

    model: str
    completion: Completion
    attempts: int


# Settlement must still fit before the authorization expires (the facilitators' 6 s margin).
SETTLE_MARGIN_SECONDS = 10


def _expected_seconds(model: ModelPrice, output_tokens: int) -> float:
    return (model.first_token_ms + output_tokens * 1000 / model.tokens_per_second) / 1000 + SETTLE_MARGIN_SECONDS


class UpstreamPool:
    """One adapter per provider name (the price table's ``provider`` field).

    Args:
        adapters: provider name -> adapter.
        health: shared breakers and statistics; models with an open breaker are skipped while
            another candidate remains, and every outcome is recorded.
    """

    def __init__(self, adapters: Mapping[str, Provider], health: HealthTracker | None = None) -> None:
        self._adapters = dict(adapters)
        self.health = health

    def _candidates(
        self, decision: RouteDecision, table: PriceTable, paid: int, deadline: float | None = None
    ) -> Iterator[str]:
        """The models to try, in order. The routed model comes first when it is healthy and can
        finish in time; the fallbacks are priced only if it fails (most calls never need them)."""
        primary = decision.model
        if self._usable(primary, table, decision.output_tokens, deadline):
            yield primary
            for model_id in decision.fallbacks:  # as before: only healthy ones the payment covers
                if model_id != primary and self._covered(model_id, decision, table, paid):
                    if self._usable(model_id, table, decision.output_tokens, deadline):
                        yield model_id
        else:
            yield from self._all_candidates(decision, table, paid, deadline)

    @staticmethod
    def _covered(model_id: str, decision: RouteDecision, table: PriceTable, paid: int) -> bool:
        # A fallback is only worth trying if what the client paid covers it.
        try:
            return quote_route(table, model_id, decision.input_tokens, decision.output_tokens).amount <= paid
        except PricingError:
            return False

    def _usable(self, model_id: str, table: PriceTable, output_tokens: int, deadline: float | None) -> bool:
        try:
            model = table.model(model_id)
        except PricingError:
            return False
        if deadline is not None and time.time() + _expected_seconds(model, output_tokens) >= deadline:
            return False
        return self.health is None or self.health.healthy(model_id)

    def _all_candidates(
        self, decision: RouteDecision, table: PriceTable, paid: int, deadline: float | None
    ) -> list[str]:
        out = [decision.model]
        out += [m for m in decision.fallbacks if self._covered(m, decision, table, paid)]
        if deadline is not None:
            now = time.time()
            fits = [m for m in out if now + _expected_seconds(table.model(m), decision.output_tokens) < deadline]
            if not fits:
                raise UpstreamError("no candidate can finish before the payment authorization expires", retryable=False)
            out = fits
        if self.health is not None:
            healthy = [m for m in out if self.health.healthy(m)]
            out = healthy or out  # every breaker open: try anyway rather than refuse
        return out

    async def _failed(self, model_id: str, exc: UpstreamError) -> None:
        if self.health is not None:
            await self.health.record_failure(model_id, exc.status, exc.retry_after, str(exc))

    def _succeeded(self, model_id: str, started: float, first_byte: float, tokens: int) -> None:
        if self.health is not None:
            now = time.perf_counter()
            self.health.note_success(model_id, (first_byte - started) * 1000, tokens, (now - started) * 1000)

    async def _first_success(
        self,
        decision: RouteDecision,
        table: PriceTable,
        paid: int,
        deadline: float | None,
        call: Callable[[Provider, ModelPrice], Awaitable[T]],
        output_tokens: Callable[[T], int],
        whole: bool,
    ) -> tuple[str, T, int]:
        """Try the candidates in order; return ``(model, result, attempts)`` of the first success.

        Every outcome is recorded in the shared health. A non-retryable error (the request
        itself is bad; another model would refuse it too) stops at once. ``whole``: ``call``
        returns the whole answer (its first byte and last byte are timed at once).
        """
        last: UpstreamError | None = None
        failed = ""
        for attempt, model_id in enumerate(self._candidates(decision, table, paid, deadline), start=1):
            if failed:
                metrics.child(metrics.FAILOVERS, failed, model_id).inc()
            failed = model_id  # until it succeeds
            model = table.model(model_id)
            adapter = self._adapters.get(model.provider)
            if adapter is None:
                last = UpstreamError(f"no provider {model.provider!r} configured")
                continue
            started = time.perf_counter()
            try:
                result = await call(adapter, model)
            except UpstreamError as exc:
                await self._failed(model_id, exc)
                if not exc.retryable:
                    raise
                last = exc
                continue
            answered = time.perf_counter()
            self._succeeded(model_id, started, answered, output_tokens(result))
            metrics.child(metrics.UPSTREAM_FIRST_BYTE, model.provider, model_id).observe(answered - started)
            if whole:  # a stream's last byte is timed where it ends (`payrouter.routes.chat`)
                metrics.child(metrics.UPSTREAM_SECONDS, model.provider, model_id).observe(answered - started)
            return model_id, result, attempt
        assert last is not None
        raise last

    async def stream(
        self, body: dict[str, Any], decision: RouteDecision, table: PriceTable, paid: int, deadline: float | None = None
    ) -> tuple[str, UpstreamStream, int]:
        """Open a stream on the first candidate that produces a first chunk.

        Returns ``(catalog model, stream, attempts)``. Failover stops at the first chunk: after
        that, bytes have reached the client.

        Raises:
            UpstreamError: every candidate failed before its first chunk.
        """
        return await self._first_success(
            decision,
            table,
            paid,
            deadline,
            lambda adapter, model: adapter.stream(body, model.upstream_model, decision.output_tokens),
            lambda _stream: 0,
            whole=False,
        )

    async def complete(
        self, body: dict[str, Any], decision: RouteDecision, table: PriceTable, paid: int, deadline: float | None = None
    ) -> Answer:
        """Run the request on the first candidate that answers.

        Raises:
            UpstreamError: every candidate failed (the last error), or a non-retryable
                error (the request itself is bad; another model would refuse it too).
        """
        model_id, completion, attempts = await self._first_success(
            decision,
            table,
            paid,
            deadline,
            lambda adapter, model: adapter.chat(body, model.upstream_model, decision.output_tokens),
            lambda result: result.output_tokens,
            whole=True,
        )
        return Answer(model=model_id, completion=completion, attempts=attempts)
