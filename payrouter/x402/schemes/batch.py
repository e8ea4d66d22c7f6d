"""The ``batch-settlement`` scheme: payment channels, a voucher per call, charged by the token.

The payer deposits once into an on-chain channel (its first payment carries the deposit's
ERC-3009 authorization; we send it and serve once it is mined). Every call then carries a
voucher: a signature over the channel's new cumulative maximum, ``charged + amount``. Serving
one costs a signature recovery and one store round trip before the model call, never a chain
round trip:

1. the config is ours (receiver, authorizer, token, withdraw delay) and hashes to the id;
   the voucher is signed by the payer's authorizer (nothing reaches the store before);
2. the channel is reserved in one atomic step (`payrouter.channels.ChannelStore.reserve`):
   cumulative check, ``max <= balance``, one request in flight per channel, no withdrawal;
   the request is parsed, its sealed quote checked and the journal record built while the
   store runs it (a refusal, or a malformed request, releases the channel before its answer);
3. the handler runs; a failure releases the channel and charges nothing;
4. the charge, the price of the tokens used (never above ``amount``), is written to the
   channel and to the journal, and the answer goes out with its receipt (``chargedAmount``,
   ``channelState``) once both writes have left the process; their replies are read after
   it (`payrouter.store.Written`): a crash then loses a reply, never the charge.

The claimer (`payrouter.channels.claimer`) turns committed vouchers into on-chain claims.
Deposits are `payrouter.x402.schemes.batch_deposits`; refunds (``GET`` of a paid URL) are
`payrouter.x402.schemes.batch_refunds`.

Streams: the voucher covers the maximum, the charge is what was streamed. The headers leave
before the charge is known, so a stream's receipt is its last SSE event (``x402.payment``,
with ``extra.chargedAmount``); clients that only read headers resync on their next call
through the corrective 402 (the official SDKs do this by themselves).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from dataclasses import dataclass, replace
from typing import Any, NoReturn

import anyio
from starlette.types import Message, Send

from payrouter import metrics
from payrouter.chain import ChainError
from payrouter.channels import ChannelState, ChannelStore, Reserved
from payrouter.channels.records import MOVEMENT_OVER, movement_record
from payrouter.channels.settler import ChannelSettler
from payrouter.channels.state import InvalidCharge
from payrouter.journal import Journal, PaymentRecord, State, now_ms
from payrouter.journal.deferred import DeferredWrites
from payrouter.metrics import calls as observed
from payrouter.quoting import PricedRoute
from payrouter.store import StoreError
from payrouter.store.base import Written
from payrouter.store.pipe import written_together
from payrouter.x402.asgi import json_error, replay_body, run_handler, send_response
from payrouter.x402.call import SCOPE_KEY, PaidCall, PaidRequest
from payrouter.x402.errors import PaymentRejected, Reason
from payrouter.x402.requirements import Requirements
from payrouter.x402.schemes.base import match_terms, presented_quote
from payrouter.x402.schemes.batch_deposits import ChannelDeposits
from payrouter.x402.schemes.batch_payload import BatchPayload, ChannelReason, parse_batch_payload
from payrouter.x402.schemes.batch_refunds import ChannelRefunds
from payrouter.x402.wire import HEADER_PAYMENT_RESPONSE, Envelope, compact_json, encode_header
from pricing import PriceTable
from wallets import recover_address_bytes, typed_data_digest
from wallets.channels import ChannelConfig, Voucher, batch_settlement_domain
from wallets.errors import WalletError

__all__ = ["BATCH", "BatchScheme", "voucher_record_id"]

log = logging.getLogger("payrouter.channels")

BATCH = "batch-settlement"
_ZERO = "0x" + "00" * 20
# The reservation outlives the quote's lifetime by this much (the model call must finish
# within the quote's timeout; the slack covers committing).
_RESERVE_SLACK_S = 60
# A voucher over the mirrored balance re-reads the chain only when the mirror is older than this.
_RESYNC_AFTER_MS = 2_000
# releases retried in the background while the store is away: 0.5 s doubling to 30 s, ~2.5 min
_RELEASE_TRIES = 10
_RELEASES_PENDING_MAX = 1024
# a voucher is verified by its signature alone, and "settled" (charged) by committing it
_VERIFY_SECONDS = metrics.VERIFY_SECONDS.labels(scheme=BATCH)
_SETTLE_SECONDS = metrics.SETTLE_SECONDS.labels(scheme=BATCH)


def voucher_record_id(channel_id: str, charged_before: int) -> str:
    """The journal id of one voucher: ``charged`` strictly grows with every committed charge
    (each is at least one atomic unit), so it names the voucher uniquely even when two vouchers
    sign the same maximum."""
    return f"batch:{channel_id}:{charged_before}"


class BatchScheme:
    """`Scheme` ``batch-settlement`` over our own channel store.

    Args:
        table: the price table (channel terms, asset, pay_to).
        store: the channel states (shared by every instance).
        settler: sends deposits and refunds (our gas wallet or a facilitator) and reads
            channels we do not know; its ``receiver_authorizer`` is the one offered.
        journal: where deposits are recorded (vouchers go to the request's journal: the same).
    """

    name = BATCH

    def __init__(
        self,
        table: PriceTable,
        store: ChannelStore,
        settler: ChannelSettler,
        journal: Journal,
    ) -> None:
        self.table = table
        self.journal = journal
        self.store = store
        self.settler = settler
        self.contract = settler.contract
        self.authorizer = settler.receiver_authorizer
        self.chain_id = table.chain_id
        self.domain = batch_settlement_domain(table.chain_id)
        self.min_deposit = table.channels.min_deposit_atomic(table.asset.decimals)
        self._releasing: set[asyncio.Task[None]] = set()
        self._refunds = ChannelRefunds(self)
        self._deposits = ChannelDeposits(self)

    def offer(self, priced: PricedRoute) -> Requirements:
        base = priced.requirements
        table = self.table
        extra: dict[str, Any] = {
            "receiverAuthorizer": self.authorizer,
            "withdrawDelay": table.channels.withdraw_delay,  # a JSON integer, or clients assume 900
            "name": table.asset.name,
            "version": table.asset.version,
            "assetTransferMethod": "eip3009",
            "minDeposit": str(self.min_deposit),
            "pricing": "usage",  # charged the price of the tokens used, at most `amount`
            "route": base.extra.get("route"),
            "price": base.extra.get("price"),
        }
        if "quote" in base.extra:
            extra["quote"] = base.extra["quote"]
        return Requirements(
            network=base.network,
            amount=base.amount,
            asset=base.asset,
            pay_to=base.pay_to,
            max_timeout_seconds=base.max_timeout_seconds,
            extra=extra,
            scheme=BATCH,
        )

    # ------------------------------------------------------------------ checks

    def check_payload(self, payload: BatchPayload, envelope: Envelope) -> str:
        """The checks that need neither the store nor the chain; the channel id (0x hex)."""
        config, table = payload.config, self.table
        payer = config.payer
        accepted = envelope.accepted or {}
        extra = accepted.get("extra") if isinstance(accepted.get("extra"), dict) else {}
        assert isinstance(extra, dict)
        if str(extra.get("receiverAuthorizer", "")).lower() != self.authorizer.lower():
            raise PaymentRejected(
                ChannelReason.RECEIVER_AUTHORIZER_MISMATCH, "accepted.extra.receiverAuthorizer is not ours", payer
            )
        if extra.get("withdrawDelay") != table.channels.withdraw_delay:
            raise PaymentRejected(
                ChannelReason.WITHDRAW_DELAY_MISMATCH,
                f"accepted.extra.withdrawDelay must be {table.channels.withdraw_delay}",
                payer,
            )
        if config.receiver.lower() != table.pay_to.lower():
            raise PaymentRejected(ChannelReason.RECEIVER_MISMATCH, "channelConfig.receiver is not payTo", payer)
        if config.receiver_authorizer.lower() != self.authorizer.lower():
            raise PaymentRejected(
                ChannelReason.RECEIVER_AUTHORIZER_MISMATCH, "channelConfig.receiverAuthorizer is not ours", payer
            )
        if config.token.lower() != table.asset.address.lower():
            raise PaymentRejected(ChannelReason.TOKEN_MISMATCH, "channelConfig.token is not the asset", payer)
        if config.withdraw_delay != table.channels.withdraw_delay:
            raise PaymentRejected(
                ChannelReason.WITHDRAW_DELAY_MISMATCH,
                f"channelConfig.withdrawDelay must be {table.channels.withdraw_delay}",
                payer,
            )
        channel_id = config.channel_id(self.chain_id)
        if channel_id != payload.channel_id:
            raise PaymentRejected(
                ChannelReason.CHANNEL_ID_MISMATCH, "voucher.channelId is not the hash of channelConfig", payer
            )
        if config.payer_authorizer.lower() == _ZERO:
            # the contract then checks the payer's own signature, through ERC-1271 when the
            # payer has code (a contract wallet, or an EOA delegated under EIP-7702): code can
            # refuse at claim time a voucher we served on, so each would need an on-chain check
            raise PaymentRejected(
                ChannelReason.VOUCHER_SIGNATURE,
                "channels here need a payerAuthorizer (an ECDSA key that signs the vouchers)",
                payer,
            )
        signer = config.payer_authorizer
        if len(payload.signature) != 65:
            # a contract payer (EIP-1271) needs an on-chain check per voucher: not offered here
            raise PaymentRejected(
                ChannelReason.VOUCHER_SIGNATURE, "vouchers must be 65-byte ECDSA signatures of an EOA authorizer", payer
            )
        try:
            digest = typed_data_digest(self.domain, Voucher(channel_id, payload.signed_max))
            recovered = recover_address_bytes(digest, payload.signature)
        except WalletError as exc:
            raise PaymentRejected(ChannelReason.VOUCHER_SIGNATURE, f"voucher signature: {exc}", payer) from None
        if recovered != bytes.fromhex(signer[2:]):
            raise PaymentRejected(
                ChannelReason.VOUCHER_SIGNATURE, "the voucher is not signed by the channel's payer authorizer", payer
            )
        return "0x" + channel_id.hex()

    async def sync_channel(self, config: ChannelConfig, channel_id: str) -> ChannelState | None:
        """Mirror the channel from the chain into the store (a channel another deployment of
        ours, or a lost store, does not know); None when it holds nothing."""
        # stamped before the read: a slow read must not pass for fresher than a newer mirror
        read_at = now_ms()
        try:
            onchain = (await self.contract.channels([bytes.fromhex(channel_id[2:])]))[bytes.fromhex(channel_id[2:])]
        except ChainError as exc:
            raise PaymentRejected(
                ChannelReason.STATE_UNAVAILABLE, f"the channel could not be read on chain ({exc})", config.payer
            ) from None
        if onchain.balance == 0:
            return None
        return await self.store.upsert_onchain(
            channel_id,
            config=json.dumps(config.to_wire(), separators=(",", ":")),
            payer=config.payer,
            balance=onchain.balance,
            total_claimed=onchain.total_claimed,
            withdraw_requested_at=onchain.withdraw_initiated_at,
            refund_nonce=onchain.refund_nonce,
            synced_at_ms=read_at,
        )

    async def balance_grew(self, payload: BatchPayload, channel_id: str, mirror: ChannelState | None) -> bool:
        """Whether the chain holds enough for ``payload``'s voucher where the store's ``mirror``
        did not (a deposit that landed after its sender gave up, a top-up made on chain): the
        mirror is refreshed, and the caller reserves again. False when the chain cannot be read,
        or the mirror was read from it a moment ago (a payer's vouchers over its balance cost
        the node one read per ``_RESYNC_AFTER_MS`` at most)."""
        if mirror is not None and now_ms() - mirror.synced_at_ms < _RESYNC_AFTER_MS:
            return False
        try:
            synced = await self.sync_channel(payload.config, channel_id)
        except PaymentRejected:
            return False
        return synced is not None and synced.balance >= payload.signed_max

    def movement(self, path: str, channel_id: str, payer: str, amount: int, tx: str, **kw: Any) -> PaymentRecord:
        """The journal record of a deposit, refund or withdrawal of ``channel_id`` under this
        price table (`payrouter.channels.records.movement_record`; ``kw`` as there)."""
        table = self.table
        return movement_record(
            path,
            channel_id,
            payer,
            amount,
            tx,
            network=table.network,
            asset=table.asset.address,
            pay_to=table.pay_to,
            **kw,
        )

    async def journal_movement(self, record: PaymentRecord) -> None:
        """Journal the movement ``record`` (settled), over a pending or released one; a store
        fault is swallowed: the chain is the record of a deposit or refund, the journal mirrors
        it, and the claimer journals one it finds missing."""
        with contextlib.suppress(StoreError):
            await self.journal.advance(record, MOVEMENT_OVER)

    # ------------------------------------------------------------------ refunds

    def refund_offer(self) -> Requirements:
        """What a refund probe (a ``GET`` of a paid URL) is answered with: the channel terms,
        from which a payer derives its channel (the amount is 0: a refund charges nothing)."""
        table = self.table
        return Requirements(
            network=table.network,
            amount=0,
            asset=table.asset.address,
            pay_to=table.pay_to,
            max_timeout_seconds=table.max_timeout_seconds,
            extra={
                "receiverAuthorizer": self.authorizer,
                "withdrawDelay": table.channels.withdraw_delay,
                "name": table.asset.name,
                "version": table.asset.version,
                "assetTransferMethod": "eip3009",
                "minDeposit": str(self.min_deposit),
            },
            scheme=BATCH,
        )

    async def refund(self, envelope: Envelope, send: Send) -> None:
        """Honour a cooperative refund (`payrouter.x402.schemes.batch_refunds`).

        Raises:
            PaymentRejected: not a valid refund of a channel of ours with something left.
        """
        await self._refunds.serve(envelope, send)

    # ------------------------------------------------------------------ serving

    async def serve(self, call: PaidRequest, envelope: Envelope, send: Send) -> None:
        payload = parse_batch_payload(envelope)
        payer = payload.config.payer
        if payload.kind == "refund":
            raise PaymentRejected(
                ChannelReason.REFUND_PAYLOAD, "a refund is asked for with GET on this URL, not with a request", payer
            )
        token = secrets.token_hex(16)
        deposited = ("", 0)
        amount = _accepted_amount(envelope) if payload.kind == "voucher" else None
        if amount is not None:
            channel_id, priced, reserved, record = await self._quote_while_reserving(
                call, envelope, payload, amount, token
            )
        else:
            channel_id = self._verify(payload, envelope)  # a deposit: before anything is sent
            priced = await self._quote(call, envelope, payer)
            if payload.kind == "deposit":
                deposited = await self._deposits.take(call, envelope, priced, payload, channel_id)
                observed.deposit_sent(call.scope, deposited[0])
            amount = priced.requirements.amount
            reserved = await self._reserve(payload, channel_id, amount, token)
            record = self._voucher_record(call, envelope, payload, channel_id, priced, amount, token)
        paid = PaidCall(
            request=call.request,
            route=priced,
            payer=payer,
            deadline=int(time.time()) + priced.requirements.max_timeout_seconds,
            usage_priced=True,
        )
        call.scope[SCOPE_KEY] = paid
        if call.request.stream:
            await self._stream(call, paid, record, channel_id, token, send)
            return
        try:
            status, headers, body = await run_handler(call.app, call.scope, call.receive, call.body, call.endpoint)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._release(channel_id, token)
            raise
        with anyio.CancelScope(shield=True):  # the charge must be recorded even if the client left
            if status >= 400:
                await self._release(channel_id, token)
                await send_response(send, status, body, headers)
                return
            charge = paid.charge(self.table)
            # the charge leaves before the answer does: the payer's next request, on any
            # instance, can only follow the answer, so it finds the charge in the store
            charging = await self._write_charge(call, paid, record, channel_id, token, charge)
            try:
                receipt = self._receipt(payer, charge, _after_commit(reserved, payload, charge), *deposited)
                await send_response(send, status, body, [*headers, receipt])
            finally:
                await charging.confirm()

    async def _quote(self, call: PaidRequest, envelope: Envelope, payer: str) -> PricedRoute:
        """The quote the request presents, which the payment's terms must echo."""
        priced = await presented_quote(call, envelope)
        if priced is None:
            raise PaymentRejected(
                Reason.INVALID_REQUIREMENTS,
                "no live quote for this request (expired or never issued); a fresh quote is attached",
                payer,
            )
        match_terms(envelope, self.offer(priced), payer)
        return priced

    def _verify(self, payload: BatchPayload, envelope: Envelope) -> str:
        checking = time.perf_counter()
        channel_id = self.check_payload(payload, envelope)
        _VERIFY_SECONDS.observe(time.perf_counter() - checking)
        return channel_id

    async def _quote_while_reserving(
        self, call: PaidRequest, envelope: Envelope, payload: BatchPayload, amount: int, token: str
    ) -> tuple[str, PricedRoute, Reserved, PaymentRecord]:
        """The voucher's channel id, quote, reservation and journal record. The voucher is
        verified first (memory only: a forged one never touches the store); its reservation is
        then sent, with the amount ``accepted`` names, and the request parsed, its quote checked
        (which holds that amount to the quote's) and the record built while the store runs it. A voucher refused then, or a malformed request, held only its payer's own
        channel, for one round trip: it is released before the answer goes out."""
        channel_id = self._verify(payload, envelope)
        sent: Written[Reserved] | None = None
        try:
            sent = await self._send_reserve(payload, channel_id, amount, token)
            priced = await self._quote(call, envelope, payload.config.payer)
            record = self._voucher_record(call, envelope, payload, channel_id, priced, amount, token)
        except BaseException:
            with anyio.CancelScope(shield=True):
                if sent is not None:
                    with contextlib.suppress(Exception):
                        await sent.reply()  # the release must come after it
                await self._release(channel_id, token)
            raise
        return channel_id, priced, await self._reserve(payload, channel_id, amount, token, sent), record

    async def _send_reserve(self, payload: BatchPayload, channel_id: str, amount: int, token: str) -> Written[Reserved]:
        return await self.store.send_reserve(
            channel_id,
            amount=amount,
            signed_max=payload.signed_max,
            signature="0x" + payload.signature.hex(),
            token=token,
            ttl_ms=(self.table.max_timeout_seconds + _RESERVE_SLACK_S) * 1000,
        )

    async def _reserve(
        self, payload: BatchPayload, channel_id: str, amount: int, token: str, sent: Written[Reserved] | None = None
    ) -> Reserved:
        """The reservation (``sent`` already, or sent now); a channel the store does not know
        is mirrored from the chain and tried again. Raises the refusal a failed one means."""
        payer = payload.config.payer
        try:
            reserved = await (sent or await self._send_reserve(payload, channel_id, amount, token)).reply()
            if reserved.kind == "not_found":
                if await self.sync_channel(payload.config, channel_id) is None:
                    raise PaymentRejected(
                        ChannelReason.CHANNEL_NOT_FOUND,
                        "no deposit in this channel; send a deposit payload first",
                        payer,
                    )
                reserved = await (await self._send_reserve(payload, channel_id, amount, token)).reply()
            elif reserved.kind == "exceeds_balance" and await self.balance_grew(payload, channel_id, reserved.state):
                reserved = await (await self._send_reserve(payload, channel_id, amount, token)).reply()
        except BaseException:
            # a reply lost to a store fault, or a request cancelled while waiting for it, may
            # hide a reservation that was taken: give it back (a no-op if it was not)
            with anyio.CancelScope(shield=True):
                await self._release(channel_id, token)
            raise
        if reserved.ok:
            return reserved
        self.refuse(reserved, payload, amount)

    def refuse(self, reserved: Reserved, payload: BatchPayload, amount: int) -> NoReturn:
        """Raise the rejection a refused reservation means (the corrective 402 for a mismatch)."""
        payer = payload.config.payer
        state = reserved.state
        if state is None:
            raise PaymentRejected(ChannelReason.CHANNEL_NOT_FOUND, "no deposit in this channel", payer)
        if reserved.kind == "mismatch":
            below = payload.signed_max <= state.total_claimed
            raise PaymentRejected(
                ChannelReason.BELOW_CLAIMED if below else ChannelReason.AMOUNT_MISMATCH,
                f"the voucher's cumulative maximum must be {state.charged + amount} (charged {state.charged} + "
                f"amount {amount}); the channel's state is attached",
                payer,
                offer_extra={
                    "channelState": state.to_wire(),
                    "voucherState": {"signedMaxClaimable": str(state.signed_max), "signature": state.signature},
                },
            )
        if reserved.kind == "busy":
            raise PaymentRejected(
                ChannelReason.CHANNEL_BUSY,
                "another request on this channel is in flight; channels serve one at a time (open more with salts)",
                payer,
            )
        if reserved.kind == "exceeds_balance":
            raise PaymentRejected(
                ChannelReason.EXCEEDS_BALANCE,
                f"the voucher's maximum {payload.signed_max} exceeds the channel's balance {state.balance}; top it up",
                payer,
            )
        raise PaymentRejected(
            ChannelReason.WITHDRAWING, "the payer asked to withdraw this channel; it takes no new vouchers", payer
        )

    def _voucher_record(
        self,
        call: PaidRequest,
        envelope: Envelope,
        payload: BatchPayload,
        channel_id: str,
        priced: PricedRoute,
        amount: int,
        owner: str,
    ) -> PaymentRecord:
        """The journal record of the voucher ``payload`` once its reservation holds: the
        reservation's compare-and-set made ``charged`` exactly ``signed_max - amount``."""
        table = self.table
        kept = {
            "channelConfig": payload.config.to_wire(),
            "voucher": {
                "channelId": channel_id,
                "maxClaimableAmount": str(payload.signed_max),
                "signature": "0x" + payload.signature.hex(),
            },
        }
        return PaymentRecord(
            id=voucher_record_id(channel_id, payload.signed_max - amount),
            scheme=BATCH,
            state=State.CLAIMED,
            owner=owner,
            payer=payload.config.payer,
            pay_to=table.pay_to,
            asset=table.asset.address,
            network=table.network,
            amount=amount,
            nonce=channel_id,
            valid_before=0,
            x402_version=envelope.version,
            payment=compact_json(kept).decode(),
            fingerprint="",
            request=call.digest,
            path=call.scope["path"],
            stream=call.request.stream,
            route=priced.to_record().decode(),
            model=priced.decision.model,
            upstream_cost=priced.quote.upstream_cost,
        )

    async def _release(self, channel_id: str, token: str) -> None:
        """The call failed: the channel is free again and nothing was charged (no voucher was
        accepted, so the journal has nothing to keep). With the store away, the release is
        retried in the background: a reservation that landed before it went away would
        otherwise hold the channel for its whole lifetime (it is a no-op if nothing was held)."""
        try:
            await self.store.release(channel_id, token)
        except StoreError:
            if len(self._releasing) >= _RELEASES_PENDING_MAX:  # a long outage: the rest lapse on their own
                log.warning("channel %s: reservation not released; it lapses on its own", channel_id)
                return
            task = asyncio.get_running_loop().create_task(self._release_later(channel_id, token))
            self._releasing.add(task)
            task.add_done_callback(self._releasing.discard)

    async def _release_later(self, channel_id: str, token: str) -> None:
        delay = 0.5
        for _ in range(_RELEASE_TRIES):
            await asyncio.sleep(delay)
            try:
                await self.store.release(channel_id, token)
                return
            except StoreError:
                delay = min(delay * 2, 30.0)
        log.error("channel %s: reservation %s could not be released; it lapses on its own", channel_id, token[:8])

    async def _write_charge(
        self, call: PaidRequest, paid: PaidCall, record: PaymentRecord, channel_id: str, token: str, charge: int
    ) -> _Charging:
        """Write the charge to the channel and its journal record, returning once both writes
        have left this process: the answer may go out now, and `_Charging.confirm` reads the
        replies after it (a crash in between loses replies, never the charge)."""
        usage = _usage_fields(paid, self.table, record)
        settled = record.moved(State.SETTLED, charged=charge, settled_at=now_ms(), delivered="complete", **usage)
        observed.committed(call.scope, settled)
        started = time.perf_counter()
        commit: Written[ChannelState | None] | None = None
        journal: Written[tuple[bool, str]] | None = None
        try:
            async with written_together():  # one write when both stores share a Redis
                try:
                    commit = await self.store.send_commit(channel_id, token, charge)
                except (StoreError, InvalidCharge) as exc:
                    commit = Written.failed(exc)
                try:
                    journal = await call.services.journal.send_advance(settled, [State.CLAIMED])
                except StoreError as exc:
                    journal = Written.failed(exc)
        except OSError:
            # not written together: read their replies now (each is sent again on a new
            # connection), so that both have left before the answer does
            for written in (commit, journal):
                if written is not None:
                    with contextlib.suppress(StoreError, InvalidCharge):
                        await written.reply()
        assert commit is not None and journal is not None
        return _Charging(settled, channel_id, charge, commit, journal, call.services.deferred, started)

    def _receipt(
        self, payer: str, charge: int, state: ChannelState | None, deposit_tx: str = "", deposit: int = 0
    ) -> tuple[bytes, bytes]:
        """``PAYMENT-RESPONSE``: the charge and the channel; a deposit's transaction and amount."""
        extra: dict[str, Any] = {"chargedAmount": str(charge)}
        if state is not None:
            extra["channelState"] = state.to_wire()
        obj = {
            "success": True,
            "transaction": deposit_tx,
            "network": self.table.network,
            "payer": payer,
            "amount": str(deposit) if deposit_tx else "",
            "extra": extra,
        }
        return HEADER_PAYMENT_RESPONSE.encode(), encode_header(obj).encode()

    async def _stream(
        self, call: PaidRequest, paid: PaidCall, record: PaymentRecord, channel_id: str, token: str, send: Send
    ) -> None:
        """Stream the answer as it comes; charge what was streamed when it ends; the receipt is
        the last SSE event."""
        anthropic = call.scope["path"] == "/v1/messages"
        started = False
        status = 200
        ended = False

        async def forward(message: Message) -> None:
            nonlocal started, status, ended
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                await send(message)
                return
            if message["type"] == "http.response.body" and not message.get("more_body", False) and status < 400:
                # hold the end back: the receipt goes before it
                body = message.get("body", b"")
                if body:
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                ended = True
                return
            await send(message)

        finished = False
        try:
            await call.app(call.scope, replay_body(call.receive, call.body), forward)
            finished = True
        except Exception:
            log.exception("paid stream handler failed")
            paid.failed = True
        finally:
            # a client that hung up after content still pays for what it took (the usage is
            # unknown then: the quote is the price); a stream without content charges nothing
            with anyio.CancelScope(shield=True):
                if status >= 400 or not paid.billable:
                    await self._release(channel_id, token)
                    charge, state = 0, None
                else:
                    charge = paid.charge(self.table)
                    state = await (await self._write_charge(call, paid, record, channel_id, token, charge)).confirm()
        if status >= 400 or not paid.billable:
            if not started:
                _, err = json_error(502, "the model call failed; nothing was charged", "upstream_error")
                await send_response(send, 502, err)
            elif ended:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        if ended and finished:
            _, receipt = self._receipt(paid.payer, charge, state)
            await send({"type": "http.response.body", "body": _receipt_event(receipt, anthropic), "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})


@dataclass(slots=True)
class _Charging:
    """A voucher's charge, written to the channel and the journal, replies not read yet."""

    settled: PaymentRecord
    channel_id: str
    charge: int
    commit: Written[ChannelState | None]
    journal: Written[tuple[bool, str]]
    deferred: DeferredWrites
    started: float

    async def confirm(self) -> ChannelState | None:
        """Read both replies: the channel as committed, or None when the commit did not land
        (the answer went out unpaid: the journal keeps the charge for the audit). A journal
        write that failed is retried in the background."""
        record = self.settled
        try:
            await self.journal.reply()
        except StoreError as exc:
            log.warning("voucher %s: journal write deferred (%s)", record.id, exc)
            self.deferred.schedule(record, [State.CLAIMED], None, 0, False, None)
        try:
            committed = await self.commit.reply()
        except (StoreError, InvalidCharge) as exc:
            committed, failure = None, str(exc)
        else:
            failure = "the reservation lapsed"
        finally:
            _SETTLE_SECONDS.observe(time.perf_counter() - self.started)
        if committed is None:
            log.error(
                "voucher %s: charge %d not committed to channel %s (%s)",
                record.id,
                self.charge,
                self.channel_id,
                failure,
            )
        return committed


def _accepted_amount(envelope: Envelope) -> int | None:
    """The amount ``accepted`` says the payer agreed to, when it is a plain uint128 decimal
    (anything else goes the slow way: quote first, whose check then refuses it)."""
    raw = (envelope.accepted or {}).get("amount")
    if not isinstance(raw, str) or not raw.isdigit() or not raw.isascii() or len(raw) > 39:
        return None
    value = int(raw)
    return value if value < 2**128 and str(value) == raw else None


def _after_commit(reserved: Reserved, payload: BatchPayload, charge: int) -> ChannelState | None:
    """The channel as the commit of ``charge`` leaves it (what its receipt reports, sent before
    the commit's reply is read): the reserved state plus the charge and the voucher."""
    state = reserved.state
    if state is None:
        return None
    return replace(
        state,
        charged=state.charged + charge,
        signed_max=payload.signed_max,
        signature="0x" + payload.signature.hex(),
        pending="",
        pending_until_ms=0,
    )


def _receipt_event(receipt: bytes, anthropic: bool) -> bytes:
    import base64

    data = json.loads(base64.b64decode(receipt))
    payload = json.dumps({"type": "x402.payment", "x402Version": 2, **data}, separators=(",", ":")).encode()
    prefix = b"" if anthropic else b"event: x402.payment\n"
    return prefix + b"data: " + payload + b"\n\n"


def _usage_fields(paid: PaidCall, table: PriceTable, record: PaymentRecord) -> dict[str, Any]:
    priced = paid.usage_charge(table)
    return {
        "answered_by": paid.answered_by,
        "input_tokens": paid.input_tokens,
        "output_tokens": paid.output_tokens,
        "upstream_cost": record.upstream_cost if priced is None else priced.upstream_cost,
    }
