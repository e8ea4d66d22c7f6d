"""Model health shared by every instance: circuit breakers, error rates and latency.

Breakers and counters live in the store (Redis), so a model that fails on one instance is
avoided by all of them. Each instance also keeps a snapshot, refreshed every second, that the
routing engine reads synchronously (`HealthTracker.healthy`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from payrouter import metrics
from payrouter.store import Store, StoreError, keys

__all__ = ["BreakerPolicy", "HealthTracker"]

log = logging.getLogger("payrouter.health")


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When a model's breaker opens and for how long.

    Attributes:
        failures: consecutive retryable failures (within ``window``) that open the breaker.
        window: seconds over which failures are counted.
        cooldown: seconds a breaker stays open (a provider's ``Retry-After`` overrides it).
        alpha: weight of the newest sample in the moving averages.
    """

    failures: int = 3
    window: int = 60
    cooldown: int = 30
    alpha: float = 0.2


# How long successes wait to be written together (see `HealthTracker.note_success`).
_FLUSH_S = 0.05


class HealthTracker:
    """Records call outcomes per catalog model and answers "is it healthy?"."""

    def __init__(self, store: Store, models: list[str], policy: BreakerPolicy | None = None) -> None:
        self.store = store
        self.models = models
        self.policy = policy or BreakerPolicy()
        self._open_until: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._successes: dict[str, list[tuple[float | None, float | None]]] = {}
        self._flusher: asyncio.Task[None] | None = None

    def healthy(self, model: str) -> bool:
        """False while this instance knows the model's breaker to be open."""
        until = self._open_until.get(model)
        # asked for every model on every route: no clock read while no breaker is open
        return until is None or until <= time.time()

    def note_success(self, model: str, first_byte_ms: float, tokens: int, total_ms: float) -> None:
        """`record_success`, later and in bulk: a paid answer must not wait for statistics, and
        a busy instance writes each model's statistics once per `_FLUSH_S` instead of three
        store round trips per call. `stop` writes what is still waiting."""
        tps = tokens * 1000 / total_ms if total_ms > 0 and tokens else None
        self._successes.setdefault(model, []).append((first_byte_ms, tps))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(_FLUSH_S)
        await self._flush()

    async def _flush(self) -> None:
        pending, self._successes = self._successes, {}
        for model, samples in pending.items():
            with contextlib.suppress(StoreError):
                await self.store.put(keys.health_fails(model), b"0", 1)
                await self._update_stats(model, False, samples)

    async def record_success(self, model: str, first_byte_ms: float, tokens: int, total_ms: float) -> None:
        """A call answered: reset the failure count, update latency and error averages."""
        with contextlib.suppress(StoreError):
            await self.store.put(keys.health_fails(model), b"0", 1)
            tps = tokens * 1000 / total_ms if total_ms > 0 and tokens else None
            await self._update_stats(model, False, [(first_byte_ms, tps)])

    async def record_failure(self, model: str, status: int | None, retry_after: float | None, reason: str) -> None:
        """A call failed: count it, and open the breaker on a 429 or after too many failures."""
        with contextlib.suppress(StoreError):
            await self._update_stats(model, True, [(None, None)], last_error=reason)
            fails = await self.store.incr(keys.health_fails(model), self.policy.window)
            if status == 429 or retry_after is not None or fails >= self.policy.failures:
                cooldown = int(retry_after) if retry_after is not None else self.policy.cooldown
                await self.open(model, max(cooldown, 1), reason)

    async def open(self, model: str, seconds: int, reason: str) -> None:
        """Open ``model``'s breaker for ``seconds`` on every instance."""
        until = time.time() + seconds
        self._open_until[model] = until
        metrics.BREAKER_OPEN.labels(model=model).set(1)  # closing is seen when scraped (`healthy`)
        await self.store.put(
            keys.health_breaker(model), json.dumps({"until": until, "reason": reason}).encode(), seconds
        )
        log.warning("breaker open for %s for %d s: %s", model, seconds, reason)

    async def _update_stats(
        self,
        model: str,
        error: bool,
        samples: list[tuple[float | None, float | None]],
        last_error: str | None = None,
    ) -> None:
        """Fold ``samples`` (``(first byte ms, tokens per second)`` per call) into the model's
        moving averages."""
        key = keys.health_stats(model)
        raw = await self.store.get(key)
        stats: dict[str, Any] = json.loads(raw) if raw else {"calls": 0, "error_rate": 0.0}
        a = self.policy.alpha
        for first_byte_ms, tps in samples:
            stats["calls"] = int(stats.get("calls", 0)) + 1
            stats["error_rate"] = (1 - a) * float(stats.get("error_rate", 0.0)) + a * (1.0 if error else 0.0)
            for name, value in (("first_byte_ms", first_byte_ms), ("tps", tps)):
                if value is not None:
                    old = stats.get(name)
                    stats[name] = value if old is None else (1 - a) * float(old) + a * float(value)
        if last_error:
            stats["last_error"] = last_error
            stats["last_error_at"] = int(time.time())
        await self.store.put(key, json.dumps(stats).encode(), 7 * 86_400)

    async def refresh(self) -> None:
        """Re-read every model's breaker from the store."""
        for model in self.models:
            raw = await self.store.get(keys.health_breaker(model))
            self._open_until[model] = float(json.loads(raw)["until"]) if raw else 0.0

    async def snapshot(self) -> dict[str, Any]:
        """Per model: breaker state, error rate, latency; for the operator endpoint."""
        out = {}
        for model in self.models:
            breaker = await self.store.get(keys.health_breaker(model))
            stats = await self.store.get(keys.health_stats(model))
            state = json.loads(breaker) if breaker else None
            out[model] = {
                "breaker": "open" if state else "closed",
                "open_until": state["until"] if state else None,
                "open_reason": state["reason"] if state else None,
                **(json.loads(stats) if stats else {"calls": 0}),
            }
        return out

    def start(self, interval: float = 1.0) -> None:
        """Refresh the local snapshot in the background."""
        stopping = self._stopping = asyncio.Event()

        async def loop() -> None:
            while not stopping.is_set():
                with contextlib.suppress(StoreError):
                    await self.refresh()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), interval)

        self._task = asyncio.create_task(loop())

    async def stop(self, grace: float = 2.0) -> None:
        """Stop the background refresh (waits at most ``grace`` seconds for it and for the
        statistics still being written)."""
        if self._flusher is not None:
            self._flusher.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._flush(), grace)
        if self._task is None:
            return
        self._stopping.set()
        self._task.cancel()
        # a cancellation can be lost inside a client library; the event still ends the loop,
        # and shutdown never waits on it for long
        done, _ = await asyncio.wait({self._task}, timeout=grace)
        if not done:
            log.warning("health refresh did not stop within %.0f s; leaving it", grace)
        elif not self._task.cancelled() and self._task.exception() is not None:
            log.warning("health refresh ended with %r", self._task.exception())
