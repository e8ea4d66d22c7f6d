"""Finding a payment on chain that another transaction settled (anyone may submit a signed
authorization): both facilitators and the reconciler ask before they call a settlement failed.

A used nonce proves nothing alone: the payer may sign another authorization with the same nonce
(to itself) and get it mined first. And a transaction may use many authorizations (a payer's
multicall): a ``Transfer`` to ``pay_to`` anywhere in it could be any of them. The payment is the
token's ``AuthorizationUsed`` of its (payer, nonce) and, as the very next log, the ``Transfer``
of its amount from the payer to ``pay_to``: the token emits the two together and nothing in
between (EIP-3009 as USDC implements it), so each transfer pays exactly one authorization.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from payrouter.chain import AUTHORIZATION_USED_TOPIC, TRANSFER_TOPIC, ChainClient, ChainError, Receipt
from payrouter.x402.requirements import Requirements
from payrouter.x402.wire import PaymentPayload

__all__ = ["find_settlement", "has_transfer", "pays", "used_to_pay"]

# A front-runner's transaction is mined after our verification of the payment, so within the
# payment's lifetime; the search looks this much further back (clock skew, slow requests).
_SEARCH_MARGIN_S = 3600


def _topic_address(address: str) -> str:
    return "0x" + "0" * 24 + address[2:].lower()


def _index(entry: dict[str, Any]) -> int:
    """A log's index in its block: JSON-RPC gives hex, some clients an int; -1 when missing
    (such a log pairs with nothing)."""
    value = entry.get("logIndex")
    if isinstance(value, int):
        return value
    try:
        return int(str(value), 16)
    except ValueError:
        return -1


def pays(logs: Iterable[dict[str, Any]], *, asset: str, payer: str, nonce: str, pay_to: str, amount: int) -> bool:
    """One transaction's ``logs`` hold the payment of authorization ``(payer, nonce)``: the
    token's ``AuthorizationUsed`` of it followed, as the next log, by its ``Transfer`` of
    exactly ``amount`` from ``payer`` to ``pay_to`` (``nonce`` as a 0x hex bytes32)."""
    ordered = sorted(logs, key=_index)
    used = [AUTHORIZATION_USED_TOPIC, _topic_address(payer), nonce.lower()]
    transfer = [TRANSFER_TOPIC, _topic_address(payer), _topic_address(pay_to)]
    for i, entry in enumerate(ordered[:-1]):
        if _index(entry) < 0 or str(entry.get("address", "")).lower() != asset.lower():
            continue
        if [str(t).lower() for t in entry.get("topics", [])] != used:
            continue
        after = ordered[i + 1]
        return (
            str(after.get("address", "")).lower() == asset.lower()
            and _index(after) == _index(entry) + 1
            and [str(t).lower() for t in after.get("topics", [])] == transfer
            and int(str(after.get("data", "0x0")), 16) == amount
        )
    return False


async def used_to_pay(
    chain: ChainClient, used: dict[str, Any], *, asset: str, payer: str, nonce: str, pay_to: str, amount: int
) -> bool:
    """The transaction of ``used`` (the token's ``AuthorizationUsed`` log of the nonce) paid
    it (`pays`), read from the payer's token logs of its block (both events name the payer
    first): no receipt needed (a node may be slow to serve one), and only mined, successful
    transactions have logs.

    Raises:
        ChainError: the chain could not be read, or its logs of that block lack ``used`` (a
            node behind the one that answered first, or a reorganisation): undecided, never
            "not paid".
    """
    block = int(str(used["blockNumber"]), 16)
    tx = str(used["transactionHash"]).lower()
    topics: list[Any] = [[AUTHORIZATION_USED_TOPIC, TRANSFER_TOPIC], _topic_address(payer)]
    logs = await chain.logs_between(asset, topics, block, block)
    mine = [entry for entry in logs if str(entry.get("transactionHash", "")).lower() == tx]
    if not any(_index(entry) == _index(used) for entry in mine):
        raise ChainError(f"the node's logs of block {block} do not have transaction {tx} yet")
    return pays(mine, asset=asset, payer=payer, nonce=nonce, pay_to=pay_to, amount=amount)


def has_transfer(receipt: Receipt, payment: PaymentPayload, req: Requirements) -> bool:
    """``receipt`` holds this payment's transfer to ``pay_to`` (`pays`)."""
    auth = payment.authorization
    return pays(
        receipt.logs,
        asset=req.asset,
        payer=auth.from_,
        nonce="0x" + auth.nonce.hex(),
        pay_to=req.pay_to,
        amount=auth.value,
    )


async def find_settlement(chain: ChainClient, payment: PaymentPayload, req: Requirements) -> str | None:
    """The transaction that used this authorization to pay ``req.pay_to``, if any (searched
    over the payment's lifetime: blocks since ``maxTimeoutSeconds`` and a margin ago).

    Raises:
        ChainError: the chain could not be searched.
    """
    auth = payment.authorization
    since = time.time() - req.max_timeout_seconds - _SEARCH_MARGIN_S
    nonce = "0x" + auth.nonce.hex()
    topics = [AUTHORIZATION_USED_TOPIC, _topic_address(auth.from_), nonce]
    for log in await chain.logs_since(req.asset, topics, since):
        if await used_to_pay(
            chain, log, asset=req.asset, payer=auth.from_, nonce=nonce, pay_to=req.pay_to, amount=auth.value
        ):
            return str(log["transactionHash"])
    return None
