"""What a settled, pending or refused payment answers, and what a refusal is checked against."""

from __future__ import annotations

import contextlib

from starlette.types import Send

from payrouter.chain import ChainError
from payrouter.journal import State, StoredAnswer
from payrouter.services import Services
from payrouter.store import StoreError
from payrouter.x402.asgi import json_error, send_response
from payrouter.x402.errors import Reason
from payrouter.x402.settlement import PaymentAttempt, SettleOutcome, receipt_header

__all__ = ["send_outcome", "used_elsewhere", "used_on_chain"]


async def used_on_chain(services: Services, attempt: PaymentAttempt) -> bool:
    """The refused authorization is used on chain, or the chain cannot tell (then the record
    must stay where the reconciler looks, not be released)."""
    try:
        return bool(await services.resolver.is_used(attempt.record))
    except ChainError:
        return True


async def used_elsewhere(services: Services, attempt: PaymentAttempt) -> SettleOutcome:
    """The facilitator reports the authorization used by another transaction (a front-run a
    remote facilitator does not look into): settled if that transaction paid ``pay_to``,
    pending while the chain cannot tell, refused if it did not."""
    await attempt.write(State.PENDING, [State.SETTLING], durable=True, reason=Reason.NONCE_USED)
    record = attempt.record
    with contextlib.suppress(ChainError, StoreError):
        record = await services.resolver.resolve(record, settle=False)
    attempt.record = record
    if record.state == State.SETTLED:
        return SettleOutcome("settled", receipt_header(record, True, record.tx, None), transaction=record.tx)
    if record.state == State.PENDING:
        reason = Reason.SETTLEMENT_PENDING
        message = "the authorization was used by another transaction; whether it paid is not known yet"
        return SettleOutcome("pending", receipt_header(record, False, record.tx, reason), reason, message, record.tx)
    reason = Reason.NONCE_USED
    message = "the authorization was used by another transaction that did not pay for this request"
    return SettleOutcome("refused", receipt_header(record, False, "", reason), reason, message)


async def send_outcome(send: Send, outcome: SettleOutcome, answer: StoredAnswer | None) -> None:
    """Answer a settled payment with its answer and receipt, anything else with why not."""
    if outcome.ok and answer is not None:
        headers = answer.asgi_headers() + [outcome.receipt, (b"cache-control", b"private, no-store")]
        await send_response(send, answer.status, answer.body, headers)
        return
    if outcome.status == "pending":
        message = (
            f"settlement pending ({outcome.message}); transaction {outcome.transaction or 'unknown'}: your payment "
            "may still move. Present the same payment again to receive the answer once it is confirmed"
        )
        _, err = json_error(402, message, "payment_error")
        await send_response(send, 402, err, [(b"content-type", b"application/json"), outcome.receipt])
    elif outcome.status == "unavailable":
        await send_response(
            send, *json_error(503, "payment state store unavailable; nothing was charged", "server_error")
        )
    else:
        _, err = json_error(402, f"settlement failed ({outcome.reason}): {outcome.message}", "payment_error")
        await send_response(send, 402, err, [(b"content-type", b"application/json"), outcome.receipt])
