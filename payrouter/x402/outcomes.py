"""What a settled, pending or refused payment answers."""

from __future__ import annotations

from starlette.types import Send

from payrouter.journal import PaymentRecord, StoredAnswer
from payrouter.x402.asgi import json_error, send_response
from payrouter.x402.settlement import SettleOutcome, settled_outcome

__all__ = ["send_failed_after_payment", "send_outcome"]


async def send_failed_after_payment(send: Send, record: PaymentRecord) -> None:
    """The model call failed after someone mined the payment (`PaymentAttempt.model_failed`):
    a 502 that says so, with the receipt; the same payment gets one more attempt."""
    message = (
        f"the model call failed after your payment was settled on chain by another transaction ({record.tx}); "
        "present the same payment again for one more attempt, free"
    )
    _, err = json_error(502, message, "upstream_error")
    await send_response(send, 502, err, [(b"content-type", b"application/json"), settled_outcome(record).receipt])


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
