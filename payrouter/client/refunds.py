"""Asking a server to refund what is left in a ``batch-settlement`` channel.

Over HTTP, as the official x402 client does it: an unpaid request to a URL the channel pays
for (``GET`` by default) must answer 402 with the ``batch-settlement`` offer; the agent then
sends the same request with a ``PAYMENT-SIGNATURE`` header whose payload is
``{"type": "refund", "channelConfig", "voucher", "amount"?}``, the voucher signed at the
channel's charged amount (a zero-charge voucher: it lets the server claim what it earned
first). The server claims and refunds on chain and answers with ``PAYMENT-RESPONSE``
(``amount``: what was refunded, ``transaction``: the refund's). A corrective 402 is resynced
and the refund asked once more.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import httpx

from payrouter.client.channel_payer import resync_channel
from payrouter.client.channels import ChannelAttempt, ChannelState, ChannelStore, channel_key, update_channel
from payrouter.client.payment import BATCH, Offer, PaymentOfferError, payment_envelope, read_offer
from payrouter.client.policy import BudgetStore
from payrouter.client.schemes import payment_response_header
from payrouter.client.vouchers import (
    ChannelResponseError,
    config_for_offer,
    read_channel_reply,
    read_corrective_state,
    read_onchain_channel,
    refund_payload,
)
from payrouter.x402.wire import encode_header
from wallets import Signer
from wallets.errors import TypedDataError

__all__ = ["RefundError", "RefundResult", "refund_channel"]


class RefundError(RuntimeError):
    """The refund was not made (nothing to refund, no channel offer, or the server refused)."""


@dataclass(frozen=True, slots=True)
class RefundResult:
    """A refund the server made.

    Attributes:
        channel_id: the channel refunded.
        amount: what came back to the wallet (atomic units).
        transaction: the refund transaction ("" when the server did not say).
        remaining: what the channel holds for the agent afterwards.
    """

    channel_id: str
    amount: int
    transaction: str
    remaining: int


def _probe(http: httpx.Client, method: str, url: str) -> tuple[Offer, dict[str, Any]]:
    response = http.request(method, url)
    if response.status_code != 402:
        raise RefundError(f"refund probe: expected 402 from {method} {url}, got {response.status_code}")
    try:
        offer = read_offer(response.headers, response.content)
    except PaymentOfferError as exc:
        raise RefundError(f"refund probe: {exc}") from None
    for req in offer.accepts:
        if req.get("scheme") == BATCH:
            return offer, req
    raise RefundError(f"{url} offers no {BATCH} option")


def _local_state(
    store: ChannelStore, key: str, attempt: ChannelAttempt, network: str, rpc_url: str | None
) -> ChannelState | None:
    state = store.get(key)
    if state is not None and state.channel_id == attempt.channel_id:
        return state
    if not rpc_url:
        return None
    # no record of this channel (another machine, lost state): the chain knows what it holds
    try:
        onchain = read_onchain_channel(rpc_url, bytes.fromhex(attempt.channel_id[2:]))
    except (httpx.HTTPError, ChannelResponseError) as exc:
        # the exception's text may quote the RPC URL, which often embeds an API key
        raise RefundError(
            f"no local record of channel {attempt.channel_id} and the chain read failed ({type(exc).__name__})"
        ) from None
    if onchain.balance == 0:
        return None
    recovered = ChannelState(
        key, network, attempt.channel_id, attempt.config, balance=onchain.balance, charged=onchain.total_claimed
    )
    if state is not None:
        return recovered  # the key holds another channel of this server (older terms): keep its record
    return update_channel(store, key, lambda current: current or recovered)


def refund_channel(
    signer: Signer,
    url: str,
    store: ChannelStore,
    *,
    budget: BudgetStore | None = None,
    amount: int | None = None,
    rpc_url: str | None = None,
    salt: bytes = bytes(32),
    http: httpx.Client | None = None,
    method: str = "GET",
) -> RefundResult:
    """Ask the server behind ``url`` to refund the agent's channel (all that is left, or ``amount``).

    Args:
        signer: the channel's payer.
        url: a URL the channel pays for (the state's ``url`` remembers the last one).
        store: the agent's channel states; the refunded amount leaves the channel's balance.
        budget: credited with the refunded amount (spending it again is allowed).
        amount: refund only this much (atomic units); None: everything not charged.
        rpc_url: read the channel on chain when the store has no record of it.
        salt: the channel's salt (as in `ChannelOptions`).
        http: the client to send with (default: a new one, 60 s timeout).
        method: the HTTP method of the probe and the refund request.

    Raises:
        RefundError: nothing to refund, no ``batch-settlement`` offer, or the server refused.
        ValueError: ``amount`` is not positive.
    """
    if amount is not None and amount <= 0:
        raise ValueError("refund amount must be a positive integer of atomic units")
    own = http is None
    client = http or httpx.Client(timeout=60)
    try:
        return _refund(signer, url, store, budget, amount, rpc_url, salt, client, method)
    finally:
        if own:
            client.close()


def _refund(
    signer: Signer,
    url: str,
    store: ChannelStore,
    budget: BudgetStore | None,
    amount: int | None,
    rpc_url: str | None,
    salt: bytes,
    http: httpx.Client,
    method: str,
) -> RefundResult:
    offer, req = _probe(http, method, url)
    network = str(req.get("network", ""))
    try:
        chain_id = int(network.removeprefix("eip155:"))
        config = config_for_offer(req, signer.address, salt)
    except (ValueError, TypedDataError) as exc:
        raise RefundError(f"unusable {BATCH} offer at {url}: {exc}") from None
    key = channel_key(network, str(req["asset"]), str(req["payTo"]), signer.address)
    channel_id = "0x" + config.channel_id(chain_id).hex()
    attempt = ChannelAttempt(key, channel_id, chain_id, config.to_wire(), 0, 0)
    for attempt_number in (1, 2):
        state = _local_state(store, key, attempt, network, rpc_url)
        if state is None or state.remaining == 0:
            raise RefundError(f"channel {channel_id} has nothing to refund")
        inner = refund_payload(signer, config, chain_id, state.charged, amount)
        envelope, _ = payment_envelope(offer, req, inner)
        response = http.request(method, url, headers={"PAYMENT-SIGNATURE": encode_header(envelope)})
        value = payment_response_header(response)
        if value:
            try:
                reply = read_channel_reply(value, None)
            except ChannelResponseError as exc:
                raise RefundError(f"refund answer unreadable: {exc}") from None
            if not reply.success or response.status_code >= 400:
                raise RefundError(f"refund refused: {reply.error or f'HTTP {response.status_code}'}")
            asked = amount if amount is not None else state.remaining
            refunded = reply.amount if reply.amount is not None else asked
            return _apply_refund(store, budget, key, channel_id, refunded, reply.transaction)
        if response.status_code == 402:
            try:
                corrective = read_corrective_state(read_offer(response.headers, response.content).body)
            except PaymentOfferError:
                corrective = None
            if corrective is None:
                raise RefundError(f"refund refused: {_error_of(response)}")
            if attempt_number == 1 and resync_channel(store, attempt, network, corrective, rpc_url):
                continue
            raise RefundError(f"refund refused: {corrective.error} (the channel could not be resynced)")
        raise RefundError(f"refund answer without PAYMENT-RESPONSE (HTTP {response.status_code})")
    raise AssertionError("unreachable")


def _error_of(response: httpx.Response) -> str:
    try:
        offer = read_offer(response.headers, response.content)
    except PaymentOfferError:
        return f"HTTP {response.status_code}"
    return str(offer.body.get("error") or f"HTTP {response.status_code}")


def _apply_refund(
    store: ChannelStore, budget: BudgetStore | None, key: str, channel_id: str, refunded: int, transaction: str
) -> RefundResult:
    def take(current: ChannelState | None) -> ChannelState | None:
        if current is None or current.channel_id != channel_id:
            return current
        # the record stays (remaining 0 after a full refund): its charged total is what the
        # next voucher on this channel must build on
        return replace(
            current, balance=max(current.balance - refunded, current.charged), refunded=current.refunded + refunded
        )

    state = update_channel(store, key, take)
    if budget is not None and refunded > 0:
        budget.credit(refunded)
    remaining = state.remaining if state is not None and state.channel_id == channel_id else 0
    return RefundResult(channel_id, refunded, transaction, remaining)
