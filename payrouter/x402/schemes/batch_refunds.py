"""Cooperative refunds of ``batch-settlement`` channels (the x402 refund handshake).

A ``GET`` of a paid URL with a refund payload (a zero-charge voucher at the channel's
``charged``, optionally an amount) asks for what is left in the channel. payrouter claims what
was charged and refunds the rest in one ``multicall`` transaction, sent through the scheme's
settler, and answers with its receipt. A refund whose outcome is lost holds its channel
(`RefundInDoubt`) until the claimer sees the chain spend its nonce.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
from typing import TYPE_CHECKING

import anyio
from starlette.types import Send

from payrouter.chain import ChainError
from payrouter.channels import Reserved
from payrouter.channels.contract import DROPPED_AFTER_MS, ChannelError, ChannelTxInDoubt, ClaimRow
from payrouter.channels.records import REFUND_PATH, claim_record
from payrouter.channels.settler import RefundOrder
from payrouter.journal import State
from payrouter.store import StoreError
from payrouter.x402.asgi import send_response
from payrouter.x402.errors import PaymentRejected, Reason
from payrouter.x402.schemes.batch_payload import BatchPayload, ChannelReason, parse_batch_payload
from payrouter.x402.wire import HEADER_PAYMENT_RESPONSE, Envelope, compact_json, encode_header

if TYPE_CHECKING:
    from payrouter.x402.schemes.batch import BatchScheme

__all__ = ["ChannelRefunds", "RefundInDoubt"]

log = logging.getLogger("payrouter.channels")


class RefundInDoubt(PaymentRejected):
    """A refund sent whose outcome is unknown: refused to the payer, and the channel held (it
    must not take vouchers against a balance it may no longer hold) until the chain decides."""

    def __init__(self, payer: str, nonce: int, amount: int, tx: str) -> None:
        super().__init__(
            ChannelReason.REFUND_TRANSACTION_FAILED,
            "the refund was sent and is not confirmed yet; the channel takes no vouchers until it is decided",
            payer,
        )
        self.nonce, self.amount, self.tx = nonce, amount, tx


class ChannelRefunds:
    """The refunds of one `BatchScheme` (its table, channel store, settler and journal)."""

    def __init__(self, scheme: BatchScheme) -> None:
        self.scheme = scheme

    async def serve(self, envelope: Envelope, send: Send) -> None:
        """Honour a cooperative refund: claim what was charged and return the rest (or the
        amount asked for) to the payer, in one transaction; answer with its receipt.

        Raises:
            PaymentRejected: not a valid refund of a channel of ours with something left.
        """
        payload = parse_batch_payload(envelope)
        config = payload.config
        payer = config.payer
        if payload.kind != "refund":
            raise PaymentRejected(ChannelReason.PAYLOAD_TYPE, "a GET of a paid URL takes only refund payloads", payer)
        if envelope.network != self.scheme.table.network:
            raise PaymentRejected(Reason.INVALID_NETWORK, f"network {envelope.network!r} is not ours", payer)
        channel_id = self.scheme.check_payload(payload, envelope)
        token = secrets.token_hex(16)
        # held while the refund is decided (released as soon as it is): a refund whose outcome
        # is lost holds the channel as long as a transaction in doubt is waited for, and the
        # claimer extends that until the chain spends its nonce (a crash meanwhile: it lapses)
        signature = "0x" + payload.signature.hex()

        async def reserve() -> Reserved:
            return await self.scheme.store.reserve(
                channel_id,
                amount=0,
                signed_max=payload.signed_max,
                signature=signature,
                token=token,
                ttl_ms=DROPPED_AFTER_MS,
                refund=True,
            )

        reserved = await reserve()
        if (reserved.kind == "not_found" and await self.scheme.sync_channel(config, channel_id) is not None) or (
            reserved.kind == "exceeds_balance" and await self.scheme.balance_grew(payload, channel_id, reserved.state)
        ):
            reserved = await reserve()
        if not reserved.ok:
            self.scheme.refuse(reserved, payload, 0)
        release = True
        try:
            receipt = await self._refund(payload, channel_id)
        except RefundInDoubt as doubt:
            # the refund may still land: the channel takes no voucher against the balance it
            # may no longer hold until the claimer sees the chain decide
            release = False
            with anyio.CancelScope(shield=True):
                await self._hold(payload, channel_id, token, doubt)
            raise
        finally:
            if release:
                with anyio.CancelScope(shield=True), contextlib.suppress(StoreError):
                    await self.scheme.store.release(channel_id, token)
        body = json.dumps({"message": "Refund acknowledged", "channelId": channel_id}).encode()
        await send_response(send, 200, body, [(b"content-type", b"application/json"), receipt])

    async def _hold(self, payload: BatchPayload, channel_id: str, token: str, doubt: RefundInDoubt) -> None:
        """Journal the refund ``pending``, naming the reservation that holds its channel: the
        claimer keeps that reservation until the chain spends the refund's nonce, then frees
        the channel (the refund is journaled from its log over this record)."""
        config = payload.config
        record = self.scheme.movement(
            REFUND_PATH, channel_id, config.payer, doubt.amount, doubt.tx, refund_nonce=doubt.nonce
        )
        held = record.moved(State.PENDING, settled_at=0, payment=compact_json({"reservation": token}).decode())
        with contextlib.suppress(StoreError):
            await self.scheme.journal.advance(held, [State.PENDING])

    async def _refund(self, payload: BatchPayload, channel_id: str) -> tuple[bytes, bytes]:
        config, payer = payload.config, payload.config.payer
        raw_id = bytes.fromhex(channel_id[2:])
        try:
            onchain = (await self.scheme.contract.channels([raw_id]))[raw_id]
        except ChainError as exc:
            raise PaymentRejected(ChannelReason.STATE_UNAVAILABLE, f"the chain is unavailable ({exc})", payer) from None
        state = await self.scheme.store.get(channel_id)
        charged = state.charged if state is not None else onchain.total_claimed
        left = onchain.balance - max(charged, onchain.total_claimed)
        if left <= 0:
            raise PaymentRejected(ChannelReason.REFUND_NO_BALANCE, "nothing is left in this channel to refund", payer)
        amount = left if payload.refund_amount is None else payload.refund_amount
        if amount > left:
            raise PaymentRejected(
                ChannelReason.REFUND_AMOUNT_INVALID, f"at most {left} atomic units are left to refund", payer
            )
        rows: list[ClaimRow] = []
        if state is not None and charged > onchain.total_claimed:
            # what was charged is claimed in the same transaction: the refund cannot take it
            rows.append(ClaimRow(config, state.signed_max, bytes.fromhex(state.signature[2:]), charged))
        order = RefundOrder(config, amount, onchain.refund_nonce, rows, payload.signed_max, payload.signature)
        try:
            done = await self.scheme.settler.refund(order)
        except ChannelTxInDoubt as exc:
            # its answer was lost: the chain says whether the refund (this nonce) went through
            found = None
            with contextlib.suppress(ChainError):
                found = await self.scheme.contract.find_refund(config, onchain.refund_nonce)
            if found is None:
                log.warning("refund: channel=%s in doubt (%s)", channel_id, exc)
                raise RefundInDoubt(payer, onchain.refund_nonce, amount, exc.tx) from None
            done = found
        except (ChannelError, ChainError, StoreError, ValueError) as exc:
            log.warning("refund: channel=%s failed (%s)", channel_id, exc)
            raise PaymentRejected(ChannelReason.REFUND_TRANSACTION_FAILED, f"the refund failed: {exc}", payer) from None
        tx, refunded = done.tx, done.refunded
        log.info("refund: channel=%s payer=%s amount=%d claimed=%d tx=%s", channel_id, payer, refunded, charged, tx)
        if done.claimed:
            table = self.scheme.table
            # counted from the receipt: a row a claim beat to the chain was skipped there
            claim = claim_record(
                tx,
                done.claimed,
                network=table.network,
                asset=table.asset.address,
                pay_to=table.pay_to,
                state=State.SETTLED,
            )
            with contextlib.suppress(StoreError):  # the claimer journals mined claims it finds missing
                await self.scheme.journal.advance(claim, [State.SETTLED])
        refund = self.scheme.movement(REFUND_PATH, channel_id, payer, refunded, tx, refund_nonce=onchain.refund_nonce)
        await self.scheme.journal_movement(refund)
        synced = await self.scheme.sync_channel(config, channel_id)
        if synced is not None and channel_id in done.claimed:
            await self.scheme.store.record_claimed(channel_id, done.claimed[channel_id][0])
        obj = {
            "success": True,
            "transaction": tx,
            "network": self.scheme.table.network,
            "payer": payer,
            "amount": str(refunded),
            "extra": {"channelState": synced.to_wire()} if synced is not None else {},
        }
        return HEADER_PAYMENT_RESPONSE.encode(), encode_header(obj).encode()
