"""A verified payment this request holds in the journal: settle it once, record every outcome.

One place decides what each outcome leaves behind, for plain answers and streams alike:

- the record moves to ``settling`` (with the answer, when there is one) *before* anything is
  broadcast, so a crash after the broadcast still leaves a record the reconciler can finish
  and an answer the payer can fetch;
- mined: ``settled``; broadcast (or maybe) but unconfirmed: ``pending`` with the hash;
  refused: the caller chooses ``released`` (nothing delivered) or ``owed`` (content went out).

Writes after the money may have moved must not be lost to a store outage: they are retried
in the background (`payrouter.journal.DeferredWrites`) and the answer goes out regardless.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from payrouter import metrics
from payrouter.chain import ChainError
from payrouter.journal import OPEN_STATES, PaymentRecord, State, StoredAnswer, now_ms
from payrouter.metrics.timing import timed
from payrouter.quoting import PricedRoute
from payrouter.services import Services
from payrouter.store import StoreError
from payrouter.x402.errors import Reason, SettlementFailed, SettlementInDoubt
from payrouter.x402.responses import settlement_header
from payrouter.x402.wire import PaymentPayload

__all__ = ["PaymentAttempt", "SettleOutcome", "new_record", "receipt_header", "record_id", "settled_outcome"]

log = logging.getLogger("payrouter.settlement")


@dataclass(frozen=True, slots=True)
class SettleOutcome:
    """What `PaymentAttempt.settle` did.

    Attributes:
        status: ``settled`` (the money moved), ``pending`` (it may move: broadcast, unconfirmed),
            ``refused`` (it did not move and our attempt cannot make it), ``unavailable``
            (nothing was broadcast: the journal could not record the attempt first).
        receipt: the ``PAYMENT-RESPONSE`` (v1: ``X-PAYMENT-RESPONSE``) header.
        reason: the x402 reason when not settled.
        message: a human explanation when not settled.
        transaction: the transaction hash, when known.
    """

    status: Literal["settled", "pending", "refused", "unavailable"]
    receipt: tuple[bytes, bytes]
    reason: str | None = None
    message: str = ""
    transaction: str = ""

    @property
    def ok(self) -> bool:
        """The money moved."""
        return self.status == "settled"


class PaymentAttempt:
    """This request's hold on a payment's journal record (it is ``record.owner``).

    Args:
        services: the app's services (journal, facilitator, table).
        payment: the verified payment.
        priced: the route it bought.
        record: the record as opened.
    """

    def __init__(self, services: Services, payment: PaymentPayload, priced: PricedRoute, record: PaymentRecord) -> None:
        self.services = services
        self.payment = payment
        self.priced = priced
        self.record = record

    @property
    def payer(self) -> str:
        """The payer's address."""
        return self.record.payer

    async def write(
        self,
        state: str,
        expected: Iterable[str],
        *,
        answer: StoredAnswer | None = None,
        drop_answer: bool = False,
        durable: bool = False,
        owner_was: str | None = None,
        **changes: Any,
    ) -> bool:
        """Move the record to ``state``; False when someone else moved it first.

        With ``durable`` a store outage defers the write (`DeferredWrites`) instead of raising.

        Raises:
            StoreError: the store is down and the write is not ``durable``.
        """
        new = self.record.moved(state, **changes)
        expected = list(expected)
        data = answer.to_bytes() if answer is not None else None
        ttl = self.services.answer_ttl
        deferred = self.services.deferred
        try:
            if deferred.holds(new.id):  # earlier writes are still waiting: this one lands after them
                raise StoreError("earlier writes to this record are still waiting for the store")
            written, stored = await self.services.journal.advance(new, expected, data, ttl, drop_answer, owner_was)
        except StoreError as exc:
            if not durable:
                raise
            log.warning("journal unavailable (%s); %s -> %s deferred", exc, new.id, state)
            deferred.schedule(new, expected, data, ttl, drop_answer, owner_was)
            self.record = new
            return True
        if not written:
            log.warning("payment %s is %s; not moved to %s by this request", new.id, stored, state)
            return False
        self.record = new
        return True

    async def finish(
        self, state: str, expected: Iterable[str], *, answer: StoredAnswer | None = None, **changes: Any
    ) -> None:
        """The last write of a request (``durable``). If the reconciler (or a replay) settled
        the payment meanwhile, what this request knows (the answer, what was delivered) is
        added to the settled record instead of being lost."""
        if await self.write(state, expected, answer=answer, durable=True, **changes):
            return
        current = await self.services.journal.get(self.record.id)
        if current is None or current.owner != self.record.owner:
            return
        self.record = current
        if current.state == State.SETTLED and state in (State.SETTLED, State.PENDING, State.OWED):
            await self.write(State.SETTLED, [State.SETTLED], answer=answer, durable=True, **changes)
        else:
            log.warning(
                "payment %s is %s: this request's %s (delivered %s) not recorded",
                current.id,
                current.state,
                state,
                changes.get("delivered"),
            )

    async def serving(self) -> None:
        """Verification passed (best effort: the claim already holds the payment)."""
        try:
            await self.write(State.SERVING, [State.CLAIMED])
        except StoreError as exc:
            log.warning("journal unavailable (%s); %s stays claimed", exc, self.record.id)

    async def refused(self, reason: str) -> None:
        """Nothing was served and nothing broadcast (verification or the model call failed):
        leave no record if this request created it, else release it."""
        try:
            if await self.services.journal.discard(self.record):
                self.record = self.record.moved(State.RELEASED, reason=reason)  # gone: as good as released
                return
        except StoreError:
            pass
        await self.release(reason)

    async def model_failed(self, reason: str) -> None:
        """The model call failed before any content went out: nothing is charged (`refused`),
        unless someone mined the authorization meanwhile (a front-runner, the payer's own
        tooling): then the money is ours and the record says so (``settled``, delivered
        ``broken``: a stream's replay serves it again), never discarded unrecorded. One chain
        read, on failures only; an unreadable chain leaves it to `refused` as before."""
        try:
            current = await self.services.resolver.resolve(self.record, settle=False)
        except (ChainError, StoreError) as exc:
            log.warning("payment %s: the chain could not be read after a failed call (%s)", self.record.id, exc)
            current = self.record
        except Exception:  # a bug must not leave the record serving: the failure is answered
            log.exception("payment %s: the chain check after a failed call crashed", self.record.id)
            current = self.record
        if current.state == State.SETTLED and current.owner == self.record.owner:
            self.record = current
            log.warning("payment %s: the model call failed after someone else settled it (%s)", current.id, current.tx)
            await self.write(State.SETTLED, [State.SETTLED], durable=True, delivered="broken", reason=reason)
            return
        await self.refused(reason)

    async def release(self, reason: str) -> None:
        """Nothing was broadcast and nothing is owed: the payment may be presented again."""
        await self.write(
            State.RELEASED,
            [State.CLAIMED, State.SERVING, State.SETTLING],
            drop_answer=True,
            durable=True,
            reason=reason,
        )

    async def owe(self, reason: str, delivered: str, transaction: str = "", answer: StoredAnswer | None = None) -> None:
        """Content went out and the transfer failed: the payer owes it (what was sent is kept)."""
        await self.finish(
            State.OWED,
            [State.CLAIMED, State.SERVING, State.SETTLING, State.PENDING],
            answer=answer,
            reason=reason,
            delivered=delivered,
            tx=transaction or self.record.tx,
        )

    def usage_fields(self, answered_by: str, input_tokens: int, output_tokens: int) -> dict[str, Any]:
        """Record fields for what the call used (the upstream cost from actual usage)."""
        from pricing import PricingError, charge_for_usage

        cost = self.priced.quote.upstream_cost
        if answered_by:
            try:
                cost = charge_for_usage(
                    self.services.table, answered_by, input_tokens, output_tokens, cap=self.priced.requirements.amount
                ).upstream_cost
            except PricingError:
                pass
        return {
            "answered_by": answered_by,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "upstream_cost": cost,
        }

    async def settle(self, answer: StoredAnswer | None = None, **changes: Any) -> SettleOutcome:
        """Record ``settling`` (with ``answer``), then settle through the facilitator.

        Never raises for a store or chain failure: the outcome says what happened.
        """
        try:
            moved = await self.write(State.SETTLING, [State.CLAIMED, State.SERVING], answer=answer, **changes)
        except StoreError as exc:
            log.warning("payment %s not settled: journal unavailable (%s)", self.record.id, exc)
            return self._unavailable()
        if not moved:
            return await self._decided_elsewhere(answer, changes)
        return await self._settle_recorded()

    async def _decided_elsewhere(self, answer: StoredAnswer | None, changes: dict[str, Any]) -> SettleOutcome:
        """The record could not move to ``settling``: while it is still open nothing was
        broadcast (``unavailable``); if the reconciler already decided it from the chain (an
        authorization that expired while serving, moved by someone else), that is the outcome,
        and a settled record gets this request's answer."""
        try:
            current = await self.services.journal.get(self.record.id)
        except StoreError:
            return self._unavailable()
        if current is None or current.owner != self.record.owner or current.state in OPEN_STATES:
            return self._unavailable()
        self.record = current
        if current.state == State.SETTLED:
            await self.write(State.SETTLED, [State.SETTLED], answer=answer, durable=True, **changes)
            return self._outcome("settled", None, "", current.tx)
        if current.state == State.RELEASED and changes.get("delivered") == "streaming":
            # released from the chain (expired unused) while this stream's first chunk went
            # out with the settle it could not start: the content is owed, never collectable
            await self.write(State.UNPAID, [State.RELEASED], durable=True, delivered="streaming")
        reason = current.reason or Reason.TRANSACTION_FAILED
        return self._outcome("refused", reason, f"the payment is {current.state}", current.tx)

    def _unavailable(self) -> SettleOutcome:
        return self._outcome("unavailable", Reason.UNEXPECTED_SETTLE, "the payment could not be recorded first")

    async def _settle_recorded(self) -> SettleOutcome:
        requirements, record = self.priced.requirements, self.record
        try:
            result = await timed(
                self.services.facilitator.settle(self.payment, requirements),
                metrics.child(metrics.SETTLE_SECONDS, record.scheme),
            )
        except SettlementInDoubt as exc:
            log.warning(
                "settlement pending: payer=%s nonce=%s tx=%s (%s)", record.payer, record.nonce, exc.transaction, exc
            )
            await self.write(
                State.PENDING, [State.SETTLING], durable=True, tx=exc.transaction, reason=Reason.SETTLEMENT_PENDING
            )
            return self._outcome("pending", Reason.SETTLEMENT_PENDING, exc.message, exc.transaction)
        except SettlementFailed as exc:
            log.warning(
                "settlement refused: %s payer=%s nonce=%s tx=%s (%s)",
                exc.reason,
                record.payer,
                record.nonce,
                exc.transaction or "-",
                exc.message,
            )
            return self._outcome("refused", exc.reason, exc.message, exc.transaction)
        except Exception as exc:  # a facilitator bug: we cannot know whether it broadcast
            log.exception("settlement crashed: payer=%s nonce=%s", record.payer, record.nonce)
            await self.write(State.PENDING, [State.SETTLING], durable=True, reason=Reason.UNEXPECTED_SETTLE)
            return self._outcome("pending", Reason.SETTLEMENT_PENDING, f"settlement outcome unknown ({exc})")
        log.info(
            "settled: payer=%s nonce=%s tx=%s amount=%d", record.payer, record.nonce, result.transaction, record.amount
        )
        await self.write(
            State.SETTLED,
            [State.SETTLING, State.PENDING],
            durable=True,
            tx=result.transaction,
            settled_at=now_ms(),
            charged=record.amount,
            reason="",
        )
        return self._outcome("settled", None, "", result.transaction)

    def _outcome(
        self,
        status: Literal["settled", "pending", "refused", "unavailable"],
        reason: str | None,
        message: str,
        tx: str = "",
    ) -> SettleOutcome:
        receipt = receipt_header(self.record, status == "settled", tx, reason)
        return SettleOutcome(status, receipt, reason, message, tx)


def _settleable(raw: dict[str, Any]) -> dict[str, Any]:
    """What settling a payment again needs (extensions and the resource are the payer's, of any
    size, and the fingerprint already binds them)."""
    keep = ("x402Version", "accepted", "payload", "scheme", "network")
    return {k: raw[k] for k in keep if k in raw}


def record_id(payer: str, nonce: bytes) -> str:
    """The journal id of an ``exact`` payment: one record per (payer, nonce)."""
    return f"exact:{payer.lower()}:0x{nonce.hex()}"


def new_record(
    payment: PaymentPayload, priced: PricedRoute, digest: str, path: str, stream: bool, owner: str
) -> PaymentRecord:
    """The record a verified-to-be ``exact`` payment opens with."""
    auth, req = payment.authorization, priced.requirements
    return PaymentRecord(
        id=record_id(auth.from_, auth.nonce),
        scheme=req.scheme,
        state=State.CLAIMED,
        owner=owner,
        payer=auth.from_,
        pay_to=req.pay_to,
        asset=req.asset,
        network=req.network,
        amount=req.amount,
        nonce="0x" + auth.nonce.hex(),
        valid_before=auth.valid_before,
        x402_version=payment.version,
        payment=json.dumps(_settleable(payment.raw), separators=(",", ":")),
        fingerprint=payment.fingerprint(),
        request=digest,
        path=path,
        stream=stream,
        route=priced.to_record().decode(),
        model=priced.decision.model,
        upstream_cost=priced.quote.upstream_cost,
    )


def receipt_header(record: PaymentRecord, success: bool, transaction: str, reason: str | None) -> tuple[bytes, bytes]:
    """The settlement receipt header of ``record``."""
    return settlement_header(record.x402_version, success, record.network, record.payer, transaction, reason)


def settled_outcome(record: PaymentRecord) -> SettleOutcome:
    """What a ``settled`` record (its ``tx``) answers with."""
    return SettleOutcome("settled", receipt_header(record, True, record.tx, None), transaction=record.tx)
