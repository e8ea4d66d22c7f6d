"""``payrouter dev``: a complete local sandbox for agent developers.

Starts anvil, deploys the dev stablecoin, funds agent accounts, starts the deterministic
test upstream and the router with the example price table re-pointed at the local chain,
then runs until stopped and tears everything down.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from payrouter.app import create_app
from payrouter.devchain import DevChain, DevToken
from payrouter.sandbox.serving import bound_port, uvicorn_server
from payrouter.sandbox.upstream import TestUpstream
from payrouter.serving_limits import uvicorn_options
from payrouter.settings import ProviderSettings, Settings
from pricing import PriceTable, Scheme, load_price_table
from wallets import LocalSigner

__all__ = ["EXAMPLE_TABLE", "Sandbox", "run_sandbox", "sandbox"]

EXAMPLE_TABLE = Path(__file__).resolve().parents[2] / "examples" / "prices.toml"
AGENT_FUNDS = 100  # whole tokens minted to each agent


@dataclass
class Sandbox:
    """A running sandbox: what an agent needs to know to pay it."""

    router_url: str
    upstream_url: str
    chain: DevChain
    token: DevToken
    table: PriceTable
    operator: LocalSigner
    agents: list[LocalSigner]
    upstream: TestUpstream
    gas_wallet: LocalSigner
    namespace: str
    batch_settlement: str = ""
    deposit_collector: str = ""
    authorizer: LocalSigner | None = None

    def describe(self) -> dict[str, Any]:
        """The ``--json`` ready line."""
        return {
            "router_url": self.router_url,
            "rpc_url": self.chain.rpc_url,
            "chain_id": self.chain.chain_id,
            "network": self.chain.network,
            "asset": self.token.address,
            "asset_name": self.token.domain.name,
            "asset_version": self.token.domain.version,
            "pay_to": self.operator.address,
            "agent_private_keys": [a.unsafe_export_private_key() for a in self.agents],
            "upstream_url": self.upstream_url,
            "batch_settlement": self.batch_settlement,
            "deposit_collector": self.deposit_collector,
        }


@asynccontextmanager
async def sandbox(
    table_path: Path = EXAMPLE_TABLE,
    host: str = "127.0.0.1",
    port: int = 0,
    agents: int = 3,
    redis_url: str | None = None,
    namespace: str = "payrouter-dev",
    chain_id: int = 31337,
    schemes: tuple[Scheme, ...] = ("exact", "batch-settlement"),
    claim_poll: float = 30.0,
) -> AsyncIterator[Sandbox]:
    """Start every part of the sandbox; stop all of it on exit, error included.

    ``chain_id`` lets tests impersonate a chain with an x402 v1 name (e.g. 84532);
    ``schemes`` are the payment schemes offered, preferred first; ``claim_poll`` the seconds
    between the channel claimer's passes (0: none; tests run passes themselves).
    """
    base_table = load_price_table(table_path)
    chain = await asyncio.to_thread(DevChain.start, chain_id=chain_id)
    try:
        token = await asyncio.to_thread(chain.deploy_token, base_table.asset.name, "USDC", base_table.asset.version)
        settlement, collector = await asyncio.to_thread(chain.install_batch_settlement)
        operator = LocalSigner.generate()
        gas = chain.new_account()
        accounts = [LocalSigner.generate() for _ in range(agents)]
        for account in accounts:
            await asyncio.to_thread(token.mint, account.address, AGENT_FUNDS * 10**base_table.asset.decimals)
        table = base_table.on_chain(chain.network, token.address, operator.address)
        table = table.model_copy(update={"schemes": list(schemes)})
        authorizer = LocalSigner.generate()
        upstream = TestUpstream()
        up_server = uvicorn_server(upstream.app, host="127.0.0.1", port=0)
        up_task = asyncio.create_task(up_server.serve())
        await _started(up_server, up_task)
        upstream_url = f"http://127.0.0.1:{bound_port(up_server)}"
        settings = Settings(
            price_table=table,
            providers={
                # "anthropic" models go through the Anthropic Messages API of the test upstream
                name: ProviderSettings(base_url=upstream_url, kind="anthropic")
                if name == "anthropic"
                else ProviderSettings(base_url=f"{upstream_url}/v1")
                for name in {m.provider for m in table.models}
            },
            redis_url=redis_url,
            namespace=namespace,
            facilitator="local",
            rpc_url=chain.rpc_url,
            gas_key=SecretStr(gas.unsafe_export_private_key()),
            channel_authorizer_key=SecretStr(authorizer.unsafe_export_private_key()),
            claim_poll=claim_poll,
        )
        server = uvicorn_server(create_app(settings), host=host, port=port, **uvicorn_options(settings.server))
        task = asyncio.create_task(server.serve())
        try:
            await _started(server, task)
            yield Sandbox(
                batch_settlement=settlement,
                deposit_collector=collector,
                authorizer=authorizer,
                router_url=f"http://{host}:{bound_port(server)}",
                upstream_url=upstream_url,
                chain=chain,
                token=token,
                table=table,
                operator=operator,
                agents=accounts,
                upstream=upstream,
                gas_wallet=gas,
                namespace=namespace,
            )
        finally:
            for srv, tsk in ((server, task), (up_server, up_task)):
                srv.should_exit = True
                await asyncio.wait_for(tsk, 15)
    finally:
        chain.stop()


async def _started(server: Any, task: asyncio.Task[None]) -> None:
    for _ in range(1500):
        if server.started:
            return
        if task.done():
            task.result()
            raise RuntimeError("server exited during startup")
        await asyncio.sleep(0.01)
    raise RuntimeError("server did not start within 15 s")


async def run_sandbox(
    on_ready: Callable[[Sandbox], None],
    table_path: Path = EXAMPLE_TABLE,
    host: str = "127.0.0.1",
    port: int = 8402,
    agents: int = 3,
    redis_url: str | None = None,
) -> None:
    """Run the sandbox until SIGINT or SIGTERM, calling ``on_ready`` once it serves."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with sandbox(table_path, host, port, agents, redis_url) as box:
        on_ready(box)
        await stop.wait()
