"""``payrouter dev``: a complete local sandbox for agent developers.

Starts anvil, deploys the dev stablecoin, funds agent accounts, starts the deterministic
test upstream and the router with the example price table re-pointed at the local chain,
then runs until stopped and tears everything down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from eth_utils.crypto import keccak
from pydantic import SecretStr

from payrouter.app import create_app
from payrouter.devchain import DevChain, DevToken
from payrouter.sandbox.cluster import LocalCluster
from payrouter.sandbox.serving import bound_port, uvicorn_server
from payrouter.sandbox.upstream import TestUpstream
from payrouter.serving_limits import uvicorn_options
from payrouter.settings import ProviderSettings, Settings
from pricing import PriceTable, Scheme, load_price_table
from wallets import LocalSigner

__all__ = [
    "EXAMPLE_TABLE",
    "SANDBOX_FILE_ENV",
    "Funded",
    "Sandbox",
    "SandboxNotRunning",
    "fund",
    "run_sandbox",
    "sandbox",
    "sandbox_file",
]

EXAMPLE_TABLE = Path(__file__).resolve().parents[2] / "examples" / "prices.toml"
AGENT_FUNDS = 100  # whole tokens minted to each agent
SANDBOX_FILE_ENV = "PAYROUTER_SANDBOX_FILE"


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
    # gas wallets besides ``gas_wallet`` (``sandbox(gas_wallets=N)``), funded like it
    more_gas_wallets: list[LocalSigner] = field(default_factory=list)

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
    gas_wallets: int = 1,
    reconcile_interval: float = 15.0,
) -> AsyncIterator[Sandbox]:
    """Start every part of the sandbox; stop all of it on exit, error included.

    ``chain_id`` lets tests impersonate a chain with an x402 v1 name (e.g. 84532);
    ``schemes`` are the payment schemes offered, preferred first; ``claim_poll`` the seconds
    between the channel claimer's passes and ``reconcile_interval`` the reconciler's (0: none;
    tests run passes themselves, when they choose); ``gas_wallets`` how many funded gas wallets
    settle payments (`payrouter.facilitator.sender.GasPool`).
    """
    base_table = load_price_table(table_path)
    chain = await asyncio.to_thread(DevChain.start, chain_id=chain_id)
    try:
        token = await asyncio.to_thread(chain.deploy_token, base_table.asset.name, "USDC", base_table.asset.version)
        settlement, collector = await asyncio.to_thread(chain.install_batch_settlement)
        operator = LocalSigner.generate()
        gas = chain.new_account()
        more_gas = [chain.new_account() for _ in range(gas_wallets - 1)]
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
            gas_keys=[SecretStr(w.unsafe_export_private_key()) for w in more_gas],
            channel_authorizer_key=SecretStr(authorizer.unsafe_export_private_key()),
            claim_poll=claim_poll,
            reconcile_interval=reconcile_interval,
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
                more_gas_wallets=more_gas,
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


def sandbox_file() -> Path:
    """Where a running ``payrouter dev`` says where it is: ``$PAYROUTER_SANDBOX_FILE`` or
    ``~/.payrouter/sandbox.json``."""
    return Path(os.environ.get(SANDBOX_FILE_ENV) or Path.home() / ".payrouter" / "sandbox.json")


class SandboxNotRunning(RuntimeError):
    """No ``payrouter dev`` sandbox answers where the sandbox file says it runs."""


@dataclass(frozen=True, slots=True)
class Funded:
    """What `fund` did: the new balances of the funded address."""

    address: str
    network: str
    asset: str
    asset_name: str
    decimals: int
    minted: int
    token_balance: int
    eth_balance: int


def _rpc(http: httpx.Client, url: str, method: str, params: list[Any]) -> Any:
    body = http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).json()
    if "error" in body:
        raise RuntimeError(f"{method} failed on the sandbox chain: {body['error'].get('message')}")
    return body["result"]


def _word(value: int | str) -> str:
    return (value if isinstance(value, int) else int(value, 16)).to_bytes(32, "big").hex()


def fund(address: str, tokens: int, eth_wei: int, state_path: Path | None = None) -> Funded:
    """Mint ``tokens`` atomic units of the sandbox's dev stablecoin to ``address`` and add
    ``eth_wei`` to its gas money, on the chain of the running sandbox (anvil cheat codes: the
    token's owner is impersonated, so no key is needed or stored).

    Raises:
        SandboxNotRunning: no sandbox file, or its chain does not answer, or is not anvil.
    """
    path = state_path or sandbox_file()
    start = "start one with `.venv/bin/payrouter dev` (dev fund works only on the local sandbox chain)"
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        raise SandboxNotRunning(f"no sandbox is running (nothing in {path}): {start}") from None
    url = state["rpc_url"]
    with httpx.Client(timeout=10) as http:
        try:
            client = _rpc(http, url, "web3_clientVersion", [])
        except httpx.HTTPError:
            raise SandboxNotRunning(
                f"the sandbox recorded in {path} (pid {state.get('pid')}) does not answer at {url}: {start}"
            ) from None
        if not str(client).lower().startswith("anvil"):
            raise SandboxNotRunning(f"{url} is not a sandbox chain ({client}): dev fund only funds on anvil")
        to = "0x" + address[2:].lower()
        asset = state["asset"]
        owner = (
            "0x"
            + _rpc(http, url, "eth_call", [{"to": asset, "data": "0x" + keccak(text="owner()")[:4].hex()}, "latest"])[
                -40:
            ]
        )
        if tokens:
            data = "0x" + keccak(text="mint(address,uint256)")[:4].hex() + _word(to) + _word(tokens)
            _rpc(http, url, "anvil_impersonateAccount", [owner])
            try:
                tx = _rpc(http, url, "eth_sendTransaction", [{"from": owner, "to": asset, "data": data}])
            finally:
                _rpc(http, url, "anvil_stopImpersonatingAccount", [owner])
            receipt = _rpc(http, url, "eth_getTransactionReceipt", [tx])
            if receipt is None or int(receipt["status"], 16) != 1:
                raise RuntimeError(f"minting on the sandbox chain failed (transaction {tx})")
        eth = int(_rpc(http, url, "eth_getBalance", [to, "latest"]), 16) + eth_wei
        if eth_wei:
            _rpc(http, url, "anvil_setBalance", [to, hex(eth)])
        balance_call = {"to": asset, "data": "0x" + keccak(text="balanceOf(address)")[:4].hex() + _word(to)}
        balance = int(_rpc(http, url, "eth_call", [balance_call, "latest"]), 16)
    return Funded(address, state["network"], asset, state["asset_name"], int(state["decimals"]), tokens, balance, eth)


def _write_sandbox_file(box: Sandbox) -> Path | None:
    """Record the running sandbox for `fund`; None when the file cannot be written."""
    path = sandbox_file()
    info = {k: v for k, v in box.describe().items() if k != "agent_private_keys"}
    info |= {"pid": os.getpid(), "decimals": box.table.asset.decimals}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(info))
    except OSError:
        return None
    return path


def _remove_sandbox_file(path: Path) -> None:
    """Remove ``path`` if it still describes this process's sandbox (a newer one may have replaced it)."""
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()


async def run_sandbox(
    on_ready: Callable[[Sandbox], None],
    table_path: Path = EXAMPLE_TABLE,
    host: str = "127.0.0.1",
    port: int = 8402,
    agents: int = 3,
    redis_url: str | None = None,
    redis_cluster: bool = False,
) -> None:
    """Run the sandbox until SIGINT or SIGTERM, calling ``on_ready`` once it serves.

    ``redis_cluster``: start a local Redis Cluster (3 masters, 3 replicas; `LocalCluster`) and
    keep the router's state there (instead of ``redis_url``); it is stopped with the rest.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    cluster = await asyncio.to_thread(LocalCluster().start) if redis_cluster else None
    try:
        async with sandbox(table_path, host, port, agents, cluster.url if cluster else redis_url) as box:
            state = _write_sandbox_file(box)
            try:
                on_ready(box)
                await stop.wait()
            finally:
                if state is not None:
                    _remove_sandbox_file(state)
    finally:
        if cluster is not None:
            cluster.stop()
