"""Opening the chain client and the facilitator the settings name, checked against the price table.

Shared by the service's lifespan and by ``payrouter ledger reconcile``, which settles and
resolves payments exactly as the service does.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import httpx
from eth_utils.address import is_address, to_checksum_address

from payrouter.chain import ChainClient
from payrouter.facilitator import Facilitator, LocalFacilitator, RemoteFacilitator
from payrouter.facilitator.channels import BATCH_SETTLEMENT
from payrouter.facilitator.local import wait_until_deployed
from payrouter.settings import ConfigError, Settings
from payrouter.store import Store
from payrouter.x402.wire import v1_network_name
from pricing import PriceTable
from wallets import LocalSigner

__all__ = ["SettlementBackend", "channel_authorizer", "open_settlement_backend", "require_support", "supported_kind"]


@dataclass(frozen=True, slots=True)
class SettlementBackend:
    """What settles payments and reads the chain.

    Attributes:
        chain: read access to the settlement chain (None: a remote facilitator and no rpc_url).
        facilitator: verifies and settles.
    """

    chain: ChainClient | None
    facilitator: Facilitator


async def supported_kind(facilitator: RemoteFacilitator, table: PriceTable, scheme: str) -> dict[str, Any]:
    """The facilitator's ``/supported`` entry for ``scheme`` on the table's network (its
    ``extra`` may name the facilitator's ``receiverAuthorizer``).

    Raises:
        ConfigError: ``GET /supported`` failed, or lists no such scheme on the table's network.
    """
    try:
        kinds = (await facilitator.supported()).get("kinds") or []
    except (httpx.HTTPError, ValueError, AttributeError) as exc:
        raise ConfigError(f"facilitator_url: GET /supported failed ({exc})") from None
    # exact is also listed under its v1 network name ("base-sepolia") by older facilitators
    names = {table.network, v1_network_name(table.chain_id)} if scheme == "exact" else {table.network}
    for kind in kinds:
        if isinstance(kind, dict) and kind.get("scheme") == scheme and kind.get("network") in names:
            return kind
    offered = sorted(f"{k.get('scheme')} on {k.get('network')}" for k in kinds if isinstance(k, dict))
    raise ConfigError(f"the facilitator does not settle {scheme!r} payments on {table.network}; it offers {offered}")


async def require_support(facilitator: RemoteFacilitator, table: PriceTable) -> None:
    """Refuse a facilitator that cannot settle every scheme the table offers.

    Raises:
        ConfigError: ``GET /supported`` failed, or lacks one of them on the table's network.
    """
    for scheme in table.schemes:
        await supported_kind(facilitator, table, scheme)


async def open_settlement_backend(settings: Settings, store: Store, stack: AsyncExitStack) -> SettlementBackend:
    """Open the chain client and facilitator of ``settings``; ``stack`` closes them.

    ``local``: the node at ``rpc_url`` must serve the price table's chain and hold the asset's
    contract; the facilitator pays gas from ``gas_key`` and takes its nonce lock in ``store``.
    ``remote``: the facilitator must settle every scheme the table offers on its network;
    ``rpc_url`` gives read access to the chain.

    Raises:
        ConfigError: the chain or the facilitator does not fit the price table.
        ChainError: the node cannot be reached, or the asset has no contract.
    """
    table = settings.price_table
    chain: ChainClient | None = None
    facilitator: Facilitator
    if settings.facilitator == "local":
        assert settings.rpc_url is not None and settings.gas_key is not None  # Settings checks both
        chain = ChainClient(settings.rpc_url)
        stack.push_async_callback(chain.close)
        chain_id = await chain.chain_id()
        if chain_id != table.chain_id:
            raise ConfigError(f"rpc_url serves chain {chain_id}, the price table wants {table.network}")
        await wait_until_deployed(chain, table.asset.address)
        gas = LocalSigner(settings.gas_key.get_secret_value())
        more_gas = [LocalSigner(key.get_secret_value()) for key in settings.gas_keys]
        local = LocalFacilitator(
            ChainClient(settings.rpc_url),
            gas,
            store,
            chain_id,
            receipt_timeout=settings.receipt_timeout,
            more_gas_wallets=more_gas,
        )
        stack.push_async_callback(local.close)
        facilitator = local
    else:
        assert settings.facilitator_url is not None  # Settings checks it
        if settings.rpc_url:
            chain = ChainClient(settings.rpc_url)
            stack.push_async_callback(chain.close)
        headers = {
            endpoint: {k: v.get_secret_value() for k, v in values.items()}
            for endpoint, values in settings.facilitator_headers.items()
        }
        remote = RemoteFacilitator(settings.facilitator_url, headers, chain=chain)
        stack.push_async_callback(remote.close)
        await require_support(remote, table)
        facilitator = remote
    return SettlementBackend(chain, facilitator)


async def channel_authorizer(
    facilitator: RemoteFacilitator, table: PriceTable, own: LocalSigner | None, warn: bool = True
) -> str:
    """The receiver authorizer channels name: ours when we hold a key, else (the operator
    opted in: ``facilitator_authorizer``) the one the facilitator's ``/supported`` advertises;
    it then signs claims and refunds (``warn``: log what that means for the operator).

    Raises:
        ConfigError: the facilitator does not settle batch-settlement on the table's network,
            or we hold no key and it advertises no authorizer.
    """
    kind = await supported_kind(facilitator, table, BATCH_SETTLEMENT)
    if own is not None:
        return own.address
    theirs = (kind.get("extra") or {}).get("receiverAuthorizer")
    if not isinstance(theirs, str) or not is_address(theirs) or int(theirs, 16) == 0:
        raise ConfigError(
            "the facilitator holds no receiver authorizer key for batch-settlement (its /supported names "
            "none): set [channels] authorizer_key_env or authorizer_keystore"
        )
    if warn:
        logging.getLogger("payrouter").warning(
            "channels: the facilitator's receiver authorizer %s signs claims and refunds; it signs a refund for "
            "whoever can call its /settle, so keep that endpoint closed to payers (or use your own authorizer key)",
            to_checksum_address(theirs),
        )
    return to_checksum_address(theirs)
