"""Changing routing without a restart: the price table and router file, reloaded live.

`LiveRouting` holds the `Services` every new request starts from. A reload builds a complete
new snapshot (table, quoter, routing engine) beside the old one and swaps one reference, so a
request sees one table from its quote to its charge: `LiveServices` (outermost middleware)
pins the snapshot into the request's scope before anything reads it. Requests already in
flight finish on the snapshot they started with; quotes sealed under the old table stay
payable as long as the new table still sells their model.

A new file is checked before it is used: it must parse and validate, keep what the running
process wired in at start (network, asset, pay_to, schemes, channel terms) and name only
configured providers, and its router file must load and route a probe request. A refused
file is logged with every reason and the old snapshot keeps serving. `Reloader` polls the
files' stat and content hash (every ``interval`` seconds) and reloads at once on SIGHUP.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from payrouter.chat import ChatRequest
from payrouter.quoting import Quoter
from payrouter.routing import Router, RoutingEngine
from payrouter.routing.default import DEFAULT_ROUTER
from payrouter.routing.predictor import QualityPredictor
from payrouter.services import Services
from pricing import PriceTable, PriceTableError, estimate_chat_input_tokens, load_price_table

__all__ = ["DEFAULT_ROUTER", "LiveRouting", "LiveServices", "ReloadRefused", "Reloader", "build_router"]

log = logging.getLogger("payrouter.reload")

_PROBE = ChatRequest.model_validate({"model": "auto", "messages": [{"role": "user", "content": "Say hello."}]})
# what the running process wired in at start (settlement, channels): a change needs a restart
_FIXED = ("network", "pay_to", "asset", "schemes", "channels")


class ReloadRefused(ValueError):
    """A new price table or router file cannot replace the running one.

    Attributes:
        reasons: every problem found, one line each.
    """

    def __init__(self, source: str, reasons: list[str]) -> None:
        super().__init__(f"{source}: " + "; ".join(reasons))
        self.reasons = reasons


def load_predictor(table: PriceTable) -> QualityPredictor | None:
    """The table's router file, else the packaged default router (None if it is missing).

    Raises:
        ValueError: the table's router file is not a router file.
    """
    path = table.routing.predictor
    if path is not None:
        return QualityPredictor.load(path)
    return QualityPredictor.load(DEFAULT_ROUTER) if DEFAULT_ROUTER.exists() else None


def build_router(table: PriceTable, health: Callable[[str], bool]) -> RoutingEngine:
    """A routing engine for ``table``: its router file (or the default router) and ``health``.

    Raises:
        ValueError: the table's router file is not a router file.
    """
    return RoutingEngine(load_predictor(table), health=health)


def _check(new: PriceTable, old: PriceTable, providers: set[str]) -> list[str]:
    reasons = []
    for name in _FIXED:
        if getattr(new, name) != getattr(old, name):
            reasons.append(f"{name} changed: the running process settles with the old one (restart to change it)")
    unknown = sorted({m.provider for m in new.models} - providers)
    if unknown:
        reasons.append(f"providers not configured in the service config: {unknown}")
    return reasons


def _probe(router: Router, table: PriceTable) -> None:
    messages = [m.model_dump(exclude_none=True) for m in _PROBE.messages]
    router.decide(_PROBE, estimate_chat_input_tokens(messages, None), table)


class LiveRouting:
    """The current `Services` snapshot, and how to replace it from files.

    Args:
        services: the snapshot built at start.
        table_path: the price table file (None: nothing to reload from).
        providers: the provider names the service config defines.
        router_factory: builds the routing engine for a new table (default: `build_router`
            with the snapshot's health tracker).
    """

    def __init__(
        self,
        services: Services,
        table_path: Path | None,
        providers: set[str],
        router_factory: Callable[[PriceTable], Router] | None = None,
    ) -> None:
        self.services = services
        self.table_path = table_path
        self.providers = providers
        self.reloads = 0
        self._factory = router_factory or (lambda table: build_router(table, services.health.healthy))

    def watched(self) -> list[Path]:
        """The files whose change triggers a reload: the table and the router file it names."""
        if self.table_path is None:
            return []
        paths = [self.table_path]
        predictor = self.services.table.routing.predictor
        if predictor is not None:
            paths.append(Path(predictor))
        return paths

    def prepare(self) -> Services:
        """Load and check the files into a new snapshot (not yet serving).

        Raises:
            ReloadRefused: with every reason the files cannot serve.
        """
        source = str(self.table_path)
        if self.table_path is None:
            raise ReloadRefused("<no table file>", ["the price table was not loaded from a file"])
        old = self.services
        try:
            table = load_price_table(self.table_path)
        except PriceTableError as exc:
            raise ReloadRefused(source, [f"{p}: {m}" for p, m in exc.problems]) from None
        reasons = _check(table, old.table, self.providers)
        if reasons:
            raise ReloadRefused(source, reasons)
        try:
            router = self._factory(table)
            _probe(router, table)
        except Exception as exc:  # any failure of a new router file must leave the old one serving
            raise ReloadRefused(table.routing.predictor or source, [f"router: {exc}"]) from None
        return replace(old, table=table, quoter=Quoter(table, router))

    def swap(self, new: Services) -> None:
        """Serve ``new`` from the next request on (requests in flight keep theirs)."""
        for scheme in new.schemes.values():
            # a scheme that prices charges itself (channels) reads the table it was given
            if getattr(scheme, "table", None) is not None:
                scheme.table = new.table  # type: ignore[attr-defined]
        new.health.models = [m.id for m in new.table.models]
        self.services = new
        self.reloads += 1

    def reload(self) -> bool:
        """Load, check and swap in the files. False (logged with the reasons) when refused."""
        try:
            new = self.prepare()
        except ReloadRefused as exc:
            log.error("reload refused, the running table and router keep serving: %s", exc)
            return False
        self.swap(new)
        log.info(
            "reloaded %s: %d models, router %s",
            self.table_path,
            len(new.table.models),
            new.table.routing.predictor or "default",
        )
        return True


def _fingerprint(paths: list[Path]) -> tuple[tuple[int, int], ...]:
    out = []
    for path in paths:
        try:
            st = path.stat()
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((-1, -1))
    return tuple(out)


def _content_hash(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        try:
            digest.update(path.read_bytes())
        except OSError:
            digest.update(b"\0missing\0")
        digest.update(b"\0")
    return digest.hexdigest()


class Reloader:
    """Watches the live files and reloads them when their content changes, or on SIGHUP.

    A stat change (mtime, size) triggers a content hash; only a new hash reloads, and a refused
    content is not retried until it changes again (SIGHUP retries at once).

    Args:
        live: what to reload.
        interval: seconds between polls (0: SIGHUP only).
    """

    def __init__(self, live: LiveRouting, interval: float) -> None:
        self.live = live
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._forced = False
        self._signal = False

    def start(self) -> None:
        """Start polling, and listen for SIGHUP (when the loop allows signal handlers)."""
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.trigger)
            self._signal = True
        self._task = asyncio.create_task(self._run(), name="payrouter-reload")

    def trigger(self) -> None:
        """Reload now, even if the files look unchanged."""
        self._forced = True
        self._wake.set()

    async def stop(self) -> None:
        """Stop watching."""
        if self._signal:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        paths = self.live.watched()
        stat = _fingerprint(paths)
        seen = await asyncio.to_thread(_content_hash, paths)
        while True:
            timeout = self.interval if self.interval > 0 else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            forced, self._forced = self._forced, False
            now = _fingerprint(paths)
            if now == stat and not forced:
                continue
            stat = now
            content = await asyncio.to_thread(_content_hash, paths)
            if content == seen and not forced:
                continue
            seen = content
            try:
                # parsing, loading the router file and probing it take tens of ms: off the loop
                new = await asyncio.to_thread(self.live.prepare)
            except ReloadRefused as exc:
                log.error("reload refused, the running table and router keep serving: %s", exc)
                continue
            self.live.swap(new)
            log.info("reloaded %s (%d models)", self.live.table_path, len(new.table.models))
            # a new table may name another router file: watch what it names now
            paths = self.live.watched()
            stat = _fingerprint(paths)
            seen = await asyncio.to_thread(_content_hash, paths)


class LiveServices:
    """ASGI middleware (outermost): pins the current snapshot into each request's state.

    Every later reader of ``scope["state"]["services"]`` (the payment gate, the handlers) then
    sees the same table for the whole request, whatever reloads meanwhile.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope.get("state")
        live = state.get("live_routing") if isinstance(state, dict) else None
        if isinstance(state, dict) and isinstance(live, LiveRouting):
            scope["state"] = {**state, "services": live.services}
        await self.app(scope, receive, send)
