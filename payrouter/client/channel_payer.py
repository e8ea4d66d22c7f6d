"""Paying ``batch-settlement`` offers from payment channels, under a spending policy.

Each request signs a voucher for ``max = charged + amount`` (what the server charged so far on
the channel plus this request's maximum). When the channel lacks that much, the payment also
carries a deposit, sized ``max(needed, extra.minDeposit, deposit or 5 × amount)`` and capped
by ``max_deposit``.

Budget: a deposit is the money leaving the wallet, so it is what the `BudgetStore` reserves;
vouchers spend what was deposited and do not count again; a refund credits the budget.

After a 2xx the server's ``PAYMENT-RESPONSE`` says what it charged (``extra.chargedAmount``,
never above the request's maximum) and the channel's cumulative charge. After a corrective
402 (the server's cumulative differs) the payer adopts the server's state only when the
server proves it with a voucher the agent signed, else reads the chain, and pays once more.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import httpx

from payrouter.client.channels import (
    ChannelAttempt,
    ChannelState,
    ChannelStore,
    MemoryChannelStore,
    channel_key,
    update_channel,
)
from payrouter.client.payment import (
    BATCH,
    Choice,
    Offer,
    PaymentOfferError,
    SignedPayment,
    payment_envelope,
    read_offer,
)
from payrouter.client.policy import BudgetStore, PaymentRefused, SpendingPolicy
from payrouter.client.schemes import Receipt, payment_response_header
from payrouter.client.vouchers import (
    ChannelResponseError,
    CorrectiveState,
    OnchainChannel,
    config_for_offer,
    deposit_payload,
    read_channel_reply,
    read_corrective_state,
    read_onchain_channel,
    voucher_payload,
)
from payrouter.x402.wire import encode_header
from wallets import Signer
from wallets.channels import ChannelConfig
from wallets.errors import TypedDataError

__all__ = ["ChannelOptions", "ChannelPayer", "ChannelTermsChanged", "resync_channel"]


class ChannelTermsChanged(PaymentOfferError):
    """The server's terms for a channel that still holds money changed (receiverAuthorizer,
    withdrawDelay): paying would open a second channel. Refund the first one."""


@dataclass(frozen=True, slots=True)
class ChannelOptions:
    """How an agent uses ``batch-settlement`` channels.

    Attributes:
        store: where channel states are kept (default: in memory).
        rpc_url: a JSON-RPC URL of the channels' chain; lets the payer read ``channels(id)``
            to recover a channel it has no record of and to resync when the server cannot prove
            its state.
        deposit: how much to deposit when a channel needs money (atomic units); default
            ``deposit_multiplier × amount``. Never below what the request needs, nor below
            the server's ``extra.minDeposit``.
        deposit_multiplier: see ``deposit`` (the official client's default is 5).
        max_deposit: the most one deposit may be; default ``deposit_multiplier × max_per_call``
            of the policy (no cap when neither is set). A request needing more is refused.
        salt: the channels' 32-byte salt; distinct salts give one payer parallel channels.
    """

    store: ChannelStore | None = None
    rpc_url: str | None = field(default=None, repr=False)  # node URLs often embed an API key
    deposit: int | None = None
    deposit_multiplier: int = 5
    max_deposit: int | None = None
    salt: bytes = bytes(32)


def _chain_id(network: str) -> int:
    return int(network.split(":", 1)[1])


def _new_state(key: str, network: str, config: ChannelConfig, chain_id: int) -> ChannelState:
    return ChannelState(key, network, "0x" + config.channel_id(chain_id).hex(), config.to_wire())


def resync_channel(
    store: ChannelStore,
    attempt: ChannelAttempt,
    network: str,
    corrective: CorrectiveState,
    rpc_url: str | None,
) -> bool:
    """Correct a channel's charged amount after a corrective 402; True when corrected.

    The server's ``chargedCumulativeAmount`` is adopted only when its ``voucherState`` is a
    voucher of this channel signed by the agent, ``charged ≤ signed max``, and (with an RPC)
    the chain's ``totalClaimed ≤ charged``. Otherwise the chain's ``totalClaimed`` is taken,
    if there is an RPC; without one nothing is changed.
    """
    config = ChannelConfig.from_wire(attempt.config)
    onchain: OnchainChannel | None = None
    if rpc_url:
        try:
            onchain = read_onchain_channel(rpc_url, bytes.fromhex(attempt.channel_id[2:]))
        except (httpx.HTTPError, ChannelResponseError, ValueError):
            onchain = None
    charged = corrective.charged
    proven = (
        charged is not None
        and corrective.signed_max is not None
        and charged <= corrective.signed_max
        and corrective.voucher_is_ours(config, attempt.chain_id)
        and (onchain is None or onchain.total_claimed <= charged)
    )
    if proven:
        assert charged is not None
        if onchain is not None:
            balance: int | None = onchain.balance
        elif corrective.balance is not None and corrective.balance >= charged:
            balance = corrective.balance  # the server's mirror of the chain: only decides top-ups
        else:
            balance = None
    elif onchain is not None:
        charged, balance = onchain.total_claimed, onchain.balance
    else:
        return False
    signed = corrective.signed_max if proven else None

    def adopt(current: ChannelState | None) -> ChannelState:
        same = current is not None and current.channel_id == attempt.channel_id
        state = current if same and current is not None else _new_state(attempt.key, network, config, attempt.chain_id)
        assert charged is not None
        return replace(
            state,
            charged=charged,
            balance=state.balance if balance is None else balance,
            signed_max=max(state.signed_max, signed or 0),
        )

    update_channel(store, attempt.key, adopt)
    return True


class ChannelPayer:
    """`payrouter.client.schemes.SchemePayer` of ``batch-settlement``.

    One request at a time per channel: the server refuses a second voucher while one is in
    flight (``…_channel_busy``). The transports queue a process's requests on a channel; agents
    in several processes sharing a channel get ``…_channel_busy`` 402s: give them distinct
    ``salt`` s (distinct channels).
    """

    def __init__(
        self, signer: Signer, policy: SpendingPolicy, budget: BudgetStore, options: ChannelOptions | None = None
    ) -> None:
        self.signer = signer
        self.policy = policy
        self.budget = budget
        self.options = options or ChannelOptions()
        self.store: ChannelStore = self.options.store or MemoryChannelStore()

    # ------------------------------------------------------------------ paying

    def _config(self, choice: Choice) -> ChannelConfig:
        try:
            return config_for_offer(choice.requirement, self.signer.address, self.options.salt)
        except TypedDataError as exc:
            raise PaymentOfferError(f"unusable batch-settlement offer: {exc}") from None

    def channel_key_of(self, choice: Choice) -> str:
        """The store key of the channel that pays ``choice``."""
        req = choice.requirement
        return channel_key(str(req["network"]), str(req["asset"]), str(req["payTo"]), self.signer.address)

    def _state(self, choice: Choice, config: ChannelConfig) -> ChannelState:
        """The channel this offer pays from: the stored one, else one recovered from the chain, else new."""
        key = self.channel_key_of(choice)
        fresh = _new_state(key, str(choice.requirement["network"]), config, choice.chain_id)
        state = self.store.get(key)
        if state is not None and state.channel_id != fresh.channel_id:
            if state.remaining > 0:
                raise ChannelTermsChanged(
                    f"the server changed the terms of channel {state.channel_id}, which still holds "
                    f"{state.remaining}; refund it before paying on new terms"
                )
            state = None  # drained: forget it and open the channel the new terms define
        if state is None and self.options.rpc_url:
            try:
                onchain = read_onchain_channel(self.options.rpc_url, config.channel_id(choice.chain_id))
            except (httpx.HTTPError, ChannelResponseError):
                onchain = None  # unknown: a corrective 402 will resync if the channel exists
            if onchain is not None and onchain.balance > 0:
                return replace(fresh, balance=onchain.balance, charged=onchain.total_claimed)
        return state or fresh

    def _deposit_cap(self) -> int | None:
        if self.options.max_deposit is not None:
            return self.options.max_deposit
        if self.policy.max_per_call is not None:
            return self.options.deposit_multiplier * self.policy.max_per_call
        return None

    def _deposit_target(self, choice: Choice, needed: int) -> tuple[int, int]:
        """(the deposit to make, the least the server takes): ``max(needed, minDeposit, deposit
        or multiplier × amount)`` capped at ``max_deposit``, which must cover the least."""
        announced = (choice.requirement.get("extra") or {}).get("minDeposit")
        least = max(needed, int(announced) if isinstance(announced, str) and announced.isdigit() else 0)
        deposit = max(least, self.options.deposit or self.options.deposit_multiplier * choice.amount)
        cap = self._deposit_cap()
        if cap is not None:
            if least > cap:
                raise PaymentRefused(
                    "max_deposit",
                    f"the channel needs a deposit of at least {least} (the request, or the server's minDeposit), "
                    f"above max_deposit {cap}",
                    least,
                    cap,
                )
            deposit = min(deposit, cap)
        return deposit, least

    def _reserve_deposit(self, deposit: int, least: int) -> tuple[int, str]:
        windows = self.policy.windows()
        try:
            return deposit, self.budget.reserve(deposit, windows)
        except PaymentRefused:
            if deposit <= least:
                raise
        # the budget cannot take the usual deposit: deposit the least that works
        return least, self.budget.reserve(least, windows)

    def pay(self, offer: Offer, choice: Choice, url: str) -> tuple[SignedPayment, str | None]:
        """Sign a voucher (and a deposit when the channel lacks the money); reserve the deposit.

        Raises:
            PaymentRefused: the deposit exceeds ``max_deposit`` or a budget window.
            ChannelTermsChanged: see the class.
            PaymentOfferError: the offer's channel terms are malformed.
        """
        req, network = choice.requirement, str(choice.requirement["network"])
        config = self._config(choice)
        state = self._state(choice, config)
        max_claimable = state.charged + choice.amount
        deposit, reservation = 0, None
        if max_claimable > state.balance:
            deposit, reservation = self._reserve_deposit(*self._deposit_target(choice, max_claimable - state.balance))
        try:
            timeout = int(req.get("maxTimeoutSeconds") or 300)
            if deposit:
                extra = req["extra"]
                inner = deposit_payload(
                    self.signer,
                    config,
                    choice.chain_id,
                    max_claimable,
                    deposit,
                    str(extra["name"]),
                    str(extra["version"]),
                    timeout,
                )
            else:
                inner = voucher_payload(self.signer, config, choice.chain_id, max_claimable)
            envelope, payment_id = payment_envelope(offer, req, inner)

            def signed(current: ChannelState | None) -> ChannelState:
                same = current is not None and current.channel_id == state.channel_id
                base = current if same and current is not None else state
                return replace(base, signed_max=max(base.signed_max, max_claimable), url=url)

            update_channel(self.store, state.key, signed)
        except BaseException:
            if reservation is not None:
                self.budget.release(reservation)
            raise
        attempt = ChannelAttempt(state.key, state.channel_id, choice.chain_id, config.to_wire(), max_claimable, deposit)
        payment = SignedPayment(
            header_name="PAYMENT-SIGNATURE",
            header_value=encode_header(envelope),
            requirement=req,
            amount=choice.amount,
            network=network,
            asset=str(req["asset"]),
            pay_to=str(req["payTo"]),
            # a voucher never expires, but a retry of an unanswered request re-sends it only this long
            valid_before=int(time.time()) + timeout,
            payment_id=payment_id,
            scheme=BATCH,
            channel=attempt,
        )
        return payment, reservation

    # ------------------------------------------------------------------ answers

    def settle(self, payment: SignedPayment, response: httpx.Response) -> tuple[Receipt | None, bool]:
        """Apply a paid response: a 2xx means the voucher (and deposit) were accepted.

        Raises:
            ChannelResponseError: the server charged above the request's maximum or sent a
                malformed ``chargedAmount``.
        """
        attempt = payment.channel
        assert attempt is not None
        value = payment_response_header(response)
        reply = read_channel_reply(value, payment.amount) if value else None
        accepted = response.status_code < 300 and (reply is None or reply.success)
        if accepted:

            def charge(current: ChannelState | None) -> ChannelState:
                if current is not None and current.channel_id == attempt.channel_id:
                    state = current
                else:
                    config = ChannelConfig.from_wire(attempt.config)
                    state = _new_state(attempt.key, payment.network, config, attempt.chain_id)
                charged = state.charged
                if reply is not None:
                    expected = state.charged + reply.charged
                    # a server whose running total disagrees is not followed: the next voucher
                    # gets a corrective 402 and the resync checks the server's proof
                    if reply.cumulative is None or reply.cumulative == expected:
                        charged = expected
                return replace(state, charged=charged, balance=state.balance + attempt.deposit)

            update_channel(self.store, attempt.key, charge)
        if reply is None and not accepted:
            return None, False
        receipt = Receipt(
            success=reply.success if reply is not None else True,
            transaction=reply.transaction if reply is not None else "",
            network=(reply.network if reply is not None else None) or payment.network,
            payer=reply.payer if reply is not None else None,
            amount=payment.amount,
            asset=payment.asset,
            pay_to=payment.pay_to,
            error=reply.error if reply is not None else None,
            scheme=BATCH,
            # a 2xx without PAYMENT-RESPONSE (e.g. a stream settled at its end) charged an unknown amount
            charged=reply.charged if reply is not None and accepted else None,
            channel_id=attempt.channel_id,
            deposit=attempt.deposit if accepted else 0,
        )
        return receipt, accepted

    def recover(self, payment: SignedPayment, response: httpx.Response) -> bool:
        """Resync after a corrective 402 (``…_cumulative_amount_mismatch`` / ``…_below_claimed``)."""
        attempt = payment.channel
        if attempt is None:
            return False
        try:
            offer = read_offer(response.headers, response.content)
        except PaymentOfferError:
            return False
        corrective = read_corrective_state(offer.body)
        if corrective is None:
            return False
        return resync_channel(self.store, attempt, payment.network, corrective, self.options.rpc_url)

    def channels(self) -> list[ChannelState]:
        """The agent's stored channels (of every payer sharing the store)."""
        return self.store.list()
