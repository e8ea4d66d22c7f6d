"""A payment presented again: its kept answer if it was paid, a paid stream served again if it
never reached its payer whole, or what became of it."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

import anyio
from starlette.types import ASGIApp, Send

from payrouter.chain import ChainError
from payrouter.journal import PaymentRecord, State, StoredAnswer, now_ms
from payrouter.quoting import PricedRoute
from payrouter.store import StoreError
from payrouter.x402.asgi import replay_body, run_handler, send_response
from payrouter.x402.call import SCOPE_KEY, PaidCall, PaidRequest
from payrouter.x402.errors import PaymentRejected, Reason
from payrouter.x402.outcomes import send_outcome
from payrouter.x402.settlement import PaymentAttempt, SettleOutcome, receipt_header, settled_outcome
from payrouter.x402.streaming import StreamSettlement, receipt_event
from payrouter.x402.wire import PaymentPayload

__all__ = ["replay", "serve_again"]

log = logging.getLogger("payrouter.gate")

# A paid stream being served (again) longer than this has lost its worker: the next replay serves it.
_STALE_SERVING_AGAIN_MS = 600_000
# How often a paid stream that did not reach its payer whole is served again (then its kept
# transcript is the answer): a model that keeps breaking must not give endless free calls.
_MAX_RESERVES = 1
_SERVED_AGAIN = "this payment is being served again by another request"
_BEING_SERVED = "this payment is being served by another request; present it again when that finishes to get its answer"


async def replay(app: ASGIApp, call: PaidRequest, payment: PaymentPayload, record: PaymentRecord, send: Send) -> None:
    """The same payment presented again: its answer if it was paid, else what became of it."""
    services = call.services
    payer = payment.authorization.from_
    if record.fingerprint != payment.fingerprint() or record.request != call.digest:
        raise PaymentRejected(
            Reason.NONCE_USED, "this authorization was already used for another payment or request", payer
        )
    if record.state in (State.PENDING, State.OWED, State.SETTLING):
        # what the chain says: money that moved is the answer, whatever the record still says
        # (its worker may be gone, or a store that restarted lost its last writes); a settling
        # record is broadcast again only once stale (`payrouter.reconciler.STALE_MS`), when
        # its worker is most likely gone (if not, the chain's nonce lets one of the two land)
        with anyio.CancelScope(shield=True):
            try:
                record = await services.resolver.resolve(record, settle=True)
            except (ChainError, StoreError) as exc:  # answer from what the journal knows
                log.warning("replay of %s: the chain could not be read (%s)", record.id, exc)
    stale = now_ms() - record.updated_at > _STALE_SERVING_AGAIN_MS  # its worker is gone
    if record.state == State.SETTLED and record.delivered == "again" and not stale:
        raise PaymentRejected(Reason.NONCE_USED, _SERVED_AGAIN, payer)
    unfinished = record.delivered in ("broken", "partial", "cut") or (
        record.delivered in ("again", "streaming") and stale
    )
    if record.state == State.SETTLED and record.stream and unfinished and record.reserves < _MAX_RESERVES:
        # paid, and the payer never got it whole (the model broke, the client or we cut it)
        await serve_again(app, call, payment, record, send)
        return
    if record.state == State.SETTLED:
        stored = await services.journal.answer(record.id)
        if stored is None and not record.stream and record.delivered == "broken":
            if record.reserves < _MAX_RESERVES:
                # paid (mined by someone else), and its model call failed: it runs again, free
                await _answer_again(call, payment, record, send)
                return
        if stored is None and record.stream and record.delivered == "streaming" and not stale:
            # settled (the transfer went with the first chunk): its transcript is kept at its end
            raise PaymentRejected(Reason.NONCE_USED, _BEING_SERVED, payer)
        if stored is None:
            raise PaymentRejected(
                Reason.NONCE_USED, f"this payment was settled ({record.tx}); its answer is no longer kept", payer
            )
        answer = StoredAnswer.from_bytes(stored)
        outcome = settled_outcome(record)
        if record.stream:  # the transcript ends with a fresh receipt event
            event = receipt_event(outcome, record.x402_version, record.path == "/v1/messages")
            answer = StoredAnswer(answer.status, answer.headers, answer.body + event)
        await send_outcome(send, outcome, answer)
        return
    if record.state == State.PENDING:
        reason = Reason.SETTLEMENT_PENDING
        message = "settlement not confirmed yet"
        await send_outcome(
            send,
            SettleOutcome("pending", receipt_header(record, False, record.tx, reason), reason, message, record.tx),
            None,
        )
        return
    if record.state in (State.OWED, State.UNPAID, State.RELEASED):
        raise PaymentRejected(
            record.reason or Reason.NONCE_USED,
            f"this payment was not settled ({record.state}): {record.reason}",
            payer,
        )
    raise PaymentRejected(Reason.NONCE_USED, _BEING_SERVED, payer)


async def _take_over(
    call: PaidRequest, payment: PaymentPayload, record: PaymentRecord
) -> tuple[PaymentAttempt, PaidCall]:
    """Take a settled record over to serve its payment again (one replay at a time; each
    counts against ``_MAX_RESERVES``): its attempt, and the paid call the handler sees."""
    priced = PricedRoute.from_record(record.route.encode())
    attempt = PaymentAttempt(call.services, payment, priced, record)
    taken = await attempt.write(
        State.SETTLED,
        [State.SETTLED],
        owner=secrets.token_hex(16),
        owner_was=record.owner,
        delivered="again",
        reserves=record.reserves + 1,
    )
    if not taken:
        raise PaymentRejected(Reason.NONCE_USED, _SERVED_AGAIN, payment.authorization.from_)
    paid = PaidCall(request=call.request, route=priced, payer=record.payer, deadline=int(time.time()) + 3600)
    call.scope[SCOPE_KEY] = paid
    return attempt, paid


async def _answer_again(call: PaidRequest, payment: PaymentPayload, record: PaymentRecord, send: Send) -> None:
    """A paid plain answer whose model call failed runs once more, free; its answer is kept."""
    attempt, paid = await _take_over(call, payment, record)
    status, headers, body = await run_handler(call.app, call.scope, call.receive, call.body, call.endpoint)
    with anyio.CancelScope(shield=True):
        if status >= 400:
            await attempt.write(State.SETTLED, [State.SETTLED], durable=True, delivered="broken")
            await send_response(send, status, body, headers)
            return
        answer = StoredAnswer.capture(status, headers, body)
        usage = attempt.usage_fields(paid.answered_by, paid.input_tokens, paid.output_tokens)
        await attempt.write(State.SETTLED, [State.SETTLED], answer=answer, durable=True, delivered="complete", **usage)
        await send_outcome(send, settled_outcome(record), answer)


async def serve_again(
    app: ASGIApp, call: PaidRequest, payment: PaymentPayload, record: PaymentRecord, send: Send
) -> None:
    """The model broke a stream after its payment moved: the same payment runs it again, free."""
    attempt, paid = await _take_over(call, payment, record)
    done: asyncio.Task[None] = asyncio.create_task(asyncio.sleep(0))
    anthropic = call.scope["path"] == "/v1/messages"
    settler = StreamSettlement(attempt, paid, done, held=True, anthropic=anthropic, prepaid=settled_outcome(record))
    await settler.run(app, call.scope, replay_body(call.receive, call.body), send)
