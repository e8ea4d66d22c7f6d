from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from payrouter.sandbox.dev import Sandbox
from payrouter.settings import ProviderSettings, Settings
from pricing import PriceTable
from tests.redis_keys import delete_namespace, run_token
from tests.sandbox_thread import sandbox_in_thread

REDIS_URL = "redis://127.0.0.1:6379/0"


def authorizer_key(box: Sandbox) -> SecretStr:
    """The sandbox's channel authorizer key, for a router of its own on the sandbox's table."""
    assert box.authorizer is not None
    return SecretStr(box.authorizer.unsafe_export_private_key())


def router_settings(box: Sandbox, table: PriceTable | None = None, **overrides: Any) -> Settings:
    """Settings of a payrouter of its own beside the sandbox's: the same upstream, chain, Redis
    namespace (so its payments are journaled where `payrouter ledger audit` looks) and channel
    authorizer, a gas wallet of its own, no background reconciler; ``overrides`` on top."""
    table = table or box.table
    fields: dict[str, Any] = {
        "price_table": table,
        "providers": {
            p: ProviderSettings(base_url=f"{box.upstream_url}/v1") for p in {m.provider for m in table.models}
        },
        "redis_url": REDIS_URL,
        "namespace": box.namespace,
        "rpc_url": box.chain.rpc_url,
        "gas_key": SecretStr(box.chain.new_account().unsafe_export_private_key()),
        "channel_authorizer_key": authorizer_key(box),
        "reconcile_interval": 0,
    }
    return Settings(**{**fields, **overrides})


def exact_only(table: PriceTable) -> PriceTable:
    """``table`` offering only ``exact`` (a remote facilitator settles no channels)."""
    return table.model_copy(update={"schemes": ["exact"]})


@pytest.fixture(scope="session")
def box() -> Iterator[Sandbox]:
    """One sandbox for the integration tests: anvil, token, test upstream and router on Redis.

    Its namespace is deleted afterwards: the ledger and other keys have no TTL.
    """
    namespace = f"payrouter-test-{run_token()}"
    try:
        with sandbox_in_thread(agents=6, redis_url=REDIS_URL, namespace=namespace) as sb:
            yield sb
    finally:
        delete_namespace(REDIS_URL, namespace)


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:
        yield client


class Observer:
    """Reads what a test must prove did not change: upstream calls and token balances."""

    def __init__(self, box: Sandbox, http: httpx.Client) -> None:
        self.box = box
        self.http = http

    def upstream_calls(self) -> int:
        return int(self.http.get(f"{self.box.upstream_url}/_stats").json()["calls"])

    def balances(self, *addresses: str) -> list[int]:
        return [self.box.token.balance_of(a) for a in addresses]

    @contextlib.contextmanager
    def unchanged(self, *addresses: str) -> Iterator[None]:
        """Assert that the block made no upstream call and moved no tokens of ``addresses``."""
        calls, balances = self.upstream_calls(), self.balances(*addresses)
        yield
        assert self.upstream_calls() == calls
        assert self.balances(*addresses) == balances

    def control(self, **knobs: object) -> None:
        self.http.post(f"{self.box.upstream_url}/_control", json=knobs).raise_for_status()


@pytest.fixture
def observer(box: Sandbox, http: httpx.Client) -> Iterator[Observer]:
    obs = Observer(box, http)
    yield obs
    obs.control(
        fail_models=[], fail_next=0, fail_status=500, delay_ms=0, chunk_delay_ms=0, break_after=None, break_models=[], retry_after=None,
        context_limit=None, malformed=False,
    )  # fmt: skip
