"""The Starlette application factory."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Route

from payrouter.chain import ChainClient
from payrouter.channels import open_channel_store
from payrouter.channels.claimer import Claimer
from payrouter.channels.contract import BatchSettlementContract
from payrouter.channels.settler import ChannelSettler, GasWalletSettler
from payrouter.facilitator import RemoteFacilitator
from payrouter.facilitator.channels import FacilitatorSettler
from payrouter.facilitator.sender import GasSender
from payrouter.feedback import FeedbackRecorder
from payrouter.feedback.served import FEEDBACK_STATE
from payrouter.http_client import new_session
from payrouter.journal import DeferredWrites, Journal
from payrouter.journal.open import open_journal
from payrouter.messages import AnthropicErrorShape
from payrouter.metrics.middleware import REQUEST_LOG_STATE, RequestMetrics
from payrouter.quote_seal import QuoteSeal
from payrouter.quoting import Quoter
from payrouter.reconciler import Reconciler, Resolver
from payrouter.reload import LiveRouting, LiveServices, Reloader, build_router
from payrouter.request_log import RequestLog
from payrouter.routes.catalog import list_models, quote
from payrouter.routes.chat import chat_completions, messages
from payrouter.routes.dashboard import dashboard_routes
from payrouter.routes.feedback import feedback
from payrouter.routes.health import healthz, model_health
from payrouter.routes.metrics import metrics_endpoint
from payrouter.routes.openapi import openapi
from payrouter.routing import Router
from payrouter.services import Services
from payrouter.serving_limits import BodyTimeout
from payrouter.settings import ConfigError, Settings
from payrouter.settlement_backend import SettlementBackend, channel_authorizer, open_settlement_backend
from payrouter.store import MemoryStore, RedisStore, Store
from payrouter.upstream import AnthropicMessages, OpenAICompatible, Provider
from payrouter.upstream.health import HealthTracker
from payrouter.upstream.pool import UpstreamPool
from payrouter.x402.gate import PaymentGate
from payrouter.x402.responses import EXPOSED_HEADERS
from payrouter.x402.schemes import build_schemes
from payrouter.x402.schemes.batch import BATCH, BatchScheme
from payrouter.x402.unpaid_limit import UnpaidLimit
from pricing import usd_to_atomic
from wallets import LocalSigner
from wallets.channels import BATCH_SETTLEMENT_ADDRESS

__all__ = ["create_app"]

log = logging.getLogger("payrouter")


def _default_router(settings: Settings, health: HealthTracker) -> Router:
    return build_router(settings.price_table, health.healthy)


async def _open_batch_scheme(
    settings: Settings, store: Store, backend: SettlementBackend, journal: Journal, stack: AsyncExitStack
) -> BatchScheme:
    """The ``batch-settlement`` scheme: the channel store, and who sends channel transactions:
    the gas wallet with our authorizer key (local facilitator), or the remote facilitator
    (signing with our authorizer key when there is one, else with its own).

    Raises:
        ConfigError: no chain to read, no settlement contract deployed there, or a remote
            facilitator that does not settle the scheme (or holds no authorizer key when we
            have none).
    """
    table, chain = settings.price_table, backend.chain
    if chain is None:
        raise ConfigError("batch-settlement needs rpc_url (channels are read on chain)")
    if (await chain.get_code(BATCH_SETTLEMENT_ADDRESS)) in ("0x", "0x0", None):
        raise ConfigError(f"no x402 batch-settlement contract at {BATCH_SETTLEMENT_ADDRESS} on {table.network}")
    own = settings.channel_authorizer_key
    authorizer = LocalSigner(own.get_secret_value()) if own is not None else None
    settler: ChannelSettler
    if isinstance(backend.facilitator, RemoteFacilitator):
        reader = BatchSettlementContract(chain, None, table.chain_id)
        receiver_authorizer = await channel_authorizer(backend.facilitator, table, authorizer)
        settler = FacilitatorSettler(
            backend.facilitator,
            reader,
            chain,
            table.network,
            receiver_authorizer,
            authorizer,
            receipt_timeout=settings.receipt_timeout,
        )
    else:
        if settings.gas_key is None or authorizer is None:
            raise ConfigError("batch-settlement with the local facilitator needs a gas key and an authorizer key")
        sender = GasSender(chain, LocalSigner(settings.gas_key.get_secret_value()), store, table.chain_id)
        contract = BatchSettlementContract(chain, sender, table.chain_id, receipt_timeout=settings.receipt_timeout)
        settler = GasWalletSettler(contract, authorizer)
    channel_store = open_channel_store(settings.redis_url, settings.namespace)
    stack.push_async_callback(channel_store.close)
    return BatchScheme(table, channel_store, settler, journal)


def _claimer(settings: Settings, batch: BatchScheme, journal: Journal, store: Store, chain: ChainClient) -> Claimer:
    """The background claimer of the channels ``batch`` serves."""
    table = settings.price_table
    threshold = usd_to_atomic(settings.claim_threshold, table.asset.decimals)
    return Claimer(
        batch.store,
        batch.settler,
        journal,
        store,
        table.pay_to,
        table.asset.address,
        settings.claim_interval,
        threshold.numerator // threshold.denominator,
        chain=chain,
        network=table.network,
        poll=settings.claim_poll,
    )


def _unpaid_limit(settings: Settings) -> UnpaidLimit | None:
    server = settings.server
    return UnpaidLimit(server.unpaid_rate, server.unpaid_burst) if server.unpaid_rate > 0 else None


def create_app(settings: Settings, router: Router | None = None, backend: SettlementBackend | None = None) -> Starlette:
    """Build the payrouter ASGI app.

    Connections (Redis, chain RPC, upstream HTTP pool, facilitator) open in the lifespan and
    close with it; startup fails with a clear error if the store is unreachable, the chain
    is not the price table's, the asset has no contract, or a remote facilitator does not
    settle ``exact`` payments on the table's network.

    Args:
        settings: validated service settings.
        router: the routing engine; by default a `RoutingEngine` with the price table's trained
            predictor, or the packaged default router when the table names none (the price
            table and its router file are then reloaded live, `payrouter.reload`).
        backend: the chain client and facilitator to use instead of the ones ``settings``
            describe (in-process tests of the gate; the caller owns and closes them).
    """
    table = settings.price_table

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with AsyncExitStack() as stack:
            http = new_session(max_connections=256)
            stack.push_async_callback(http.close)
            store: Store = RedisStore(settings.redis_url, settings.namespace) if settings.redis_url else MemoryStore()
            stack.push_async_callback(store.close)
            await store.ping()
            journal = open_journal(settings.redis_url, settings.namespace)
            stack.push_async_callback(journal.close)
            deferred = DeferredWrites(journal)
            stack.push_async_callback(deferred.drain, 5.0)
            settling = backend or await open_settlement_backend(settings, store, stack)
            chain, facilitator = settling.chain, settling.facilitator
            health = HealthTracker(store, [m.id for m in table.models])
            await health.refresh()
            health.start()
            stack.push_async_callback(health.stop)
            adapters: dict[str, Provider] = {
                name: (AnthropicMessages if p.kind == "anthropic" else OpenAICompatible)(
                    p.base_url,
                    p.api_key.get_secret_value() if p.api_key else None,
                    http,
                    timeout=p.timeouts(),
                    total=p.timeout,
                )
                for name, p in settings.providers.items()
            }
            resolver = Resolver(journal, chain, facilitator)
            services = Services(
                table=table,
                quoter=Quoter(table, router or _default_router(settings, health)),
                store=store,
                facilitator=facilitator,
                upstreams=UpstreamPool(adapters, health),
                health=health,
                http=http,
                chain=chain,
                public_url=settings.public_url,
                max_body_bytes=settings.max_body_bytes,
                journal=journal,
                deferred=deferred,
                resolver=resolver,
                quotes=QuoteSeal(store),
                unpaid_limit=_unpaid_limit(settings),
            )
            batch = (
                await _open_batch_scheme(settings, store, settling, journal, stack) if BATCH in table.schemes else None
            )
            services.schemes = build_schemes(table, batch)
            if batch is not None and chain is not None and settings.claim_poll > 0:
                claimer = _claimer(settings, batch, journal, store, chain)
                claimer.start()
                stack.push_async_callback(claimer.stop)
            reconciler = Reconciler(resolver, store, settings.reconcile_interval)
            if settings.reconcile_interval > 0:
                reconciler.start()
                stack.push_async_callback(reconciler.stop)
            request_log = RequestLog(settings.request_log)
            stack.callback(request_log.close)
            log.info("payrouter ready: %d models on %s", len(table.models), table.network)
            live = LiveRouting(
                services,
                settings.price_table_path,
                set(settings.providers),
                (lambda _table: router) if router is not None else None,
            )
            if settings.price_table_path is not None:
                reloader = Reloader(live, settings.reload)
                reloader.start()
                stack.push_async_callback(reloader.stop)
            recorder = FeedbackRecorder(store, settings.feedback_ttl) if settings.feedback_ttl > 0 else None
            if recorder is not None:
                recorder.start()
                stack.push_async_callback(recorder.stop)
            yield {"services": services, "live_routing": live, REQUEST_LOG_STATE: request_log, FEEDBACK_STATE: recorder}

    # the paid paths: behind the payment gate, which calls their endpoints itself once paid
    paid = {"/v1/chat/completions": chat_completions, "/v1/messages": messages}
    routes = [
        *(Route(path, endpoint, methods=["POST"]) for path, endpoint in paid.items()),
        Route("/v1/quote", quote, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/v1/health/models", model_health, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/v1/feedback", feedback, methods=["POST"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        *dashboard_routes(settings.dashboard),
    ]
    middleware = [
        Middleware(RequestMetrics, paths=[getattr(r, "path", "") for r in routes]),
        Middleware(LiveServices),
        Middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=EXPOSED_HEADERS,
        ),
        Middleware(AnthropicErrorShape),
        Middleware(BodyTimeout, seconds=settings.server.body_timeout),
        Middleware(PaymentGate, paid_paths=frozenset(paid), endpoints=paid),
    ]
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
