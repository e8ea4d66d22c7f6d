"""The quoter's route memo: a request seen again reuses its route only while nothing the route
depends on has changed (model health), and the memo stays bounded."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from payrouter.chat import ChatRequest, parse_chat_request, request_digest
from payrouter.quoting import MEMO_SIZE, PricedRoute, Quoter
from payrouter.reload import build_router
from payrouter.routing import RouteConstraints, RouteDecision, RoutingEngine
from payrouter.sandbox.dev import EXAMPLE_TABLE
from payrouter.store import MemoryStore
from payrouter.upstream.health import HealthTracker
from pricing import PriceTable, load_price_table
from wallets import LocalSigner

TABLE = load_price_table(EXAMPLE_TABLE).on_chain(
    "eip155:31337", "0x5FbDB2315678afecb367f032d93F642f64180aa3", LocalSigner.generate().address
)


class Counting:
    """The real engine, counting how often it is asked (with or without its state hook)."""

    def __init__(self, engine: RoutingEngine, state: bool = True) -> None:
        self.engine = engine
        self.calls = 0
        if state:
            self.routing_state = engine.routing_state

    def decide(
        self, request: ChatRequest, input_tokens: int, table: PriceTable, constraints: RouteConstraints | None = None
    ) -> RouteDecision:
        self.calls += 1
        return self.engine.decide(request, input_tokens, table, constraints)


def _request(content: str, model: str = "auto") -> tuple[ChatRequest, str]:
    body: dict[str, Any] = {"model": model, "max_tokens": 200, "messages": [{"role": "user", "content": content}]}
    request, raw = parse_chat_request(json.dumps(body).encode())
    return request, request_digest("POST", "/v1/chat/completions", raw)


def _fresh(request: ChatRequest, health: HealthTracker) -> PricedRoute:
    return Quoter(TABLE, build_router(TABLE, health.healthy)).price(request)


def test_a_request_seen_again_reuses_its_route_and_it_is_the_route_routing_gives() -> None:
    health = HealthTracker(MemoryStore(), [m.id for m in TABLE.models])
    router = Counting(build_router(TABLE, health.healthy))
    quoter = Quoter(TABLE, router)
    request, digest = _request("Write a haiku about routers.")
    first = quoter.price(request, digest=digest)
    again = quoter.price(request, digest=digest)
    assert again is first and router.calls == 1
    assert first == _fresh(request, health)
    other, other_digest = _request("Prove that sqrt(2) is irrational.")
    assert quoter.price(other, digest=other_digest) == _fresh(other, health)
    assert router.calls == 2
    # no digest, no reuse
    quoter.price(request)
    assert router.calls == 3


def test_a_model_turning_unhealthy_or_healthy_again_reroutes_a_remembered_request() -> None:
    async def run() -> None:
        health = HealthTracker(MemoryStore(), [m.id for m in TABLE.models])
        router = Counting(build_router(TABLE, health.healthy))
        quoter = Quoter(TABLE, router)
        request, digest = _request("What is the capital of France?", model="gpt-4o-mini")
        before = quoter.price(request, digest=digest)
        assert before.decision.fallbacks, "the named model has fallbacks to lose"
        dropped = before.decision.fallbacks[0]
        await health.open(dropped, 1, "test: upstream down")
        during = quoter.price(request, digest=digest)
        assert router.calls == 2
        assert dropped not in during.decision.fallbacks
        assert during == _fresh(request, health)
        await asyncio.sleep(1.1)  # the breaker closes by itself: the state changes back
        after = quoter.price(request, digest=digest)
        assert router.calls == 3
        assert after.decision.fallbacks == before.decision.fallbacks

    asyncio.run(run())


def test_the_memo_is_bounded_and_forgets_the_oldest_first() -> None:
    router = Counting(RoutingEngine())
    quoter = Quoter(TABLE, router)
    requests = [_request(f"question {i}") for i in range(MEMO_SIZE + 1)]
    for request, digest in requests:
        quoter.price(request, digest=digest)
    assert router.calls == MEMO_SIZE + 1
    newest, oldest = requests[-1], requests[0]
    quoter.price(*newest[:1], digest=newest[1])
    assert router.calls == MEMO_SIZE + 1  # still remembered
    quoter.price(*oldest[:1], digest=oldest[1])
    assert router.calls == MEMO_SIZE + 2  # pushed out by the one after the limit


def test_a_router_that_cannot_say_its_state_is_asked_every_time() -> None:
    router = Counting(RoutingEngine(), state=False)
    quoter = Quoter(TABLE, router)
    request, digest = _request("hello")
    quoter.price(request, digest=digest)
    quoter.price(request, digest=digest)
    assert router.calls == 2
