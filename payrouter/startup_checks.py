"""What ``payrouter serve`` checks before it listens, every problem at once.

One run reports everything that would stop the service: the config and the variables it names
(all of them, `payrouter.settings.load_settings`), the price table, its router file, Redis, the
chain behind ``rpc_url`` (reachable, the table's chain, the asset deployed), a remote
facilitator's ``/supported``, and whether the gas wallet can pay for settlements
(`payrouter.gas_funds`). Problems raise one `StartupError`; warnings (a low gas wallet; with a
remote facilitator, a node the reconciler cannot read) are returned for the caller to log.
"""

from __future__ import annotations

import asyncio
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from payrouter.chain import ChainClient, ChainError
from payrouter.gas_funds import gas_funds
from payrouter.settings import ConfigError, Settings, load_settings
from pricing import PriceTable
from wallets import LocalSigner, WalletError
from wallets.channels import BATCH_SETTLEMENT_ADDRESS

__all__ = ["StartupError", "StartupReport", "check_startup", "predictor_problem", "redact_url"]

_TIMEOUT = 5.0


class StartupError(Exception):
    """The service cannot start; ``problems`` lists every reason, one sentence each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems

    def report(self, command: str = "payrouter serve") -> str:
        """The message for the operator: a headline and one line per problem."""
        n = len(self.problems)
        lines = [f"{command}: cannot start, {n} problem{'s' if n != 1 else ''}:"]
        for problem in self.problems:
            lines.append("  - " + problem.replace("\n", "\n    "))
        return "\n".join(lines)


@dataclass
class StartupReport:
    """A passed check: the settings, and warnings worth logging loudly."""

    settings: Settings
    warnings: list[str] = field(default_factory=list)


def redact_url(url: str) -> str:
    """``url`` without credentials or path (a node URL often carries its API key in either)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparseable URL>"
    tail = "/..." if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{host}{port}{tail}"


def predictor_problem(table: PriceTable) -> str | None:
    """Why the table's router file (``[routing] predictor``) cannot be used, or None."""
    from payrouter.routing.predictor import QualityPredictor

    path = table.routing.predictor
    if not path:
        return None
    if not Path(path).exists():
        return (
            f"[routing] predictor: router file {path} does not exist (train one with "
            "`payrouter router train`, or remove the line to route by the table's quality profiles)"
        )
    try:
        QualityPredictor.load(path)
    except ValueError as exc:
        return f"[routing] predictor: {exc}"
    return None


async def _redis_problem(url: str) -> str | None:
    from payrouter.store import RedisStore, StoreError

    try:
        store = RedisStore(url)
    except ValueError as exc:
        return f"redis_url: {exc}"
    try:
        await asyncio.wait_for(store.ping(), _TIMEOUT)
    except (StoreError, TimeoutError, OSError) as exc:
        return f"Redis at {redact_url(url)} (redis_url) does not answer: {exc}"
    finally:
        await store.close()
    return None


def _key_problem(key: SecretStr | None, what: str) -> tuple[str | None, str | None]:
    """``(address, None)`` for a usable key (``(None, None)`` without one), else ``(None, problem)``."""
    if key is None:
        return None, None
    try:
        return LocalSigner(key.get_secret_value()).address, None
    except (WalletError, ValueError, TypeError):
        return None, f"{what} is not a private key (32 bytes of hex)"


async def _chain_problems(
    settings: Settings, table: PriceTable, gas_addresses: list[str], warnings: list[str]
) -> list[str]:
    assert settings.rpc_url is not None
    url = redact_url(settings.rpc_url)
    chain = ChainClient(settings.rpc_url, timeout=_TIMEOUT)
    try:
        try:
            chain_id = await chain.chain_id()
        except ChainError as exc:
            return [f"the node at rpc_url {url} does not answer ({exc})"]
        if chain_id != table.chain_id:
            return [f"rpc_url {url} serves chain {chain_id}, the price table wants {table.network}"]
        problems: list[str] = []
        if (await chain.get_code(table.asset.address)) in ("0x", "0x0", ""):
            problems.append(f"no contract at the price table's asset {table.asset.address} on {table.network}")
        if "batch-settlement" in table.schemes and (await chain.get_code(BATCH_SETTLEMENT_ADDRESS)) in ("0x", "0x0"):
            problems.append(f"the table offers batch-settlement but no contract is at {BATCH_SETTLEMENT_ADDRESS}")
        if settings.facilitator == "local" and gas_addresses:
            for funds in await gas_funds(chain, gas_addresses):
                if funds.state == "empty":
                    problems.append("settlements cannot be paid: " + funds.describe())
                elif funds.state == "low":
                    warnings.append("gas wallet low: " + funds.describe())
        return problems
    except ChainError as exc:
        return [f"the node at rpc_url {url} failed a check ({exc})"]
    finally:
        await chain.close()


async def _facilitator_problem(settings: Settings, table: PriceTable) -> str | None:
    from payrouter.facilitator import RemoteFacilitator
    from payrouter.settlement_backend import channel_authorizer, require_support

    assert settings.facilitator_url is not None
    headers = {e: {k: v.get_secret_value() for k, v in h.items()} for e, h in settings.facilitator_headers.items()}
    remote = RemoteFacilitator(settings.facilitator_url, headers)
    try:
        await require_support(remote, table)
        if "batch-settlement" in table.schemes and settings.channel_facilitator_authorizer:
            await channel_authorizer(remote, table, None, warn=False)
    except ConfigError as exc:
        return str(exc)
    finally:
        await remote.close()
    return None


def _raw_urls(path: Path) -> tuple[str | None, str | None]:
    """redis_url and rpc_url straight from the file, to check them when the config is invalid."""
    try:
        doc: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return None, None
    facilitator = doc.get("facilitator") or {}
    redis_url = doc.get("redis_url")
    # with a remote facilitator the node is only read (by the reconciler): not a start-up problem
    rpc_url = facilitator.get("rpc_url") if facilitator.get("mode", "local") == "local" else None
    return (redis_url if isinstance(redis_url, str) else None), (rpc_url if isinstance(rpc_url, str) else None)


async def _check(config: Path) -> StartupReport:
    problems: list[str] = []
    warnings: list[str] = []
    try:
        settings: Settings | None = load_settings(config)
    except ConfigError as exc:
        settings = None
        problems += exc.problems
    if settings is None:
        # still say whether what the config points at answers: one run, every problem
        redis_url, rpc_url = _raw_urls(config)
        if redis_url and (problem := await _redis_problem(redis_url)):
            problems.append(problem)
        if rpc_url:
            chain = ChainClient(rpc_url, timeout=_TIMEOUT)
            try:
                await chain.chain_id()
            except ChainError as exc:
                problems.append(f"the node at rpc_url {redact_url(rpc_url)} does not answer ({exc})")
            finally:
                await chain.close()
        raise StartupError(problems)
    table = settings.price_table
    gas_addresses: list[str] = []
    keys = [(settings.gas_key, "the gas key (facilitator.gas_key_env or gas_keystore)")]
    keys += [
        (key, f"gas key {i + 2} (facilitator.gas_keys_env / gas_keystores)") for i, key in enumerate(settings.gas_keys)
    ]
    for key, what in keys:
        address, problem = _key_problem(key, what)
        if problem:
            problems.append(problem)
        elif address is not None:
            gas_addresses.append(address)
    _, problem = _key_problem(settings.channel_authorizer_key, "the channel authorizer key ([channels])")
    if problem:
        problems.append(problem)
    if problem := predictor_problem(table):
        problems.append(problem)
    if settings.redis_url and (problem := await _redis_problem(settings.redis_url)):
        problems.append(problem)
    if settings.rpc_url:
        chain_problems = await _chain_problems(settings, table, gas_addresses, warnings)
        if settings.facilitator == "local":
            problems += chain_problems
        else:
            # a remote facilitator settles; the node is only read by the reconciler, which retries
            warnings += [f"{p} (the reconciler reads the chain there)" for p in chain_problems]
    if settings.facilitator == "remote" and (problem := await _facilitator_problem(settings, table)):
        problems.append(problem)
    if problems:
        raise StartupError(problems)
    return StartupReport(settings, warnings)


def check_startup(config: str | Path) -> StartupReport:
    """Check everything ``payrouter serve --config config`` needs.

    Raises:
        StartupError: one or more problems; ``problems`` lists all of them.
    """
    return asyncio.run(_check(Path(config)))
