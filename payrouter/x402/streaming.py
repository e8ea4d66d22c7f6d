"""Paying for a stream: the transfer runs while the tokens flow, and a failed one cuts them.

``during_stream`` (default): when the model's first chunk is ready the transfer is started
and the stream goes out at once. If the transfer is refused (the payer cancelled the
authorization, moved the funds, ...) the stream is cut: one SSE error event and a failed
receipt event, and the record says what was delivered (``owed``). If it cannot even be
broadcast (RPC or store down) the content waits while it is retried, and the stream is cut
when ``unconfirmed_seconds`` pass without a broadcast. A broadcast that is merely unconfirmed lets
the stream go on: the per-payer and total exposure limits bound what may ride on such
payments, and a payer over them (or any payer in ``before_first_byte`` mode) waits for the
transfer before the first byte. A payer with an unpaid stream is refused streams.

The receipt is the last SSE event, after ``data: [DONE]``: ``event: x402.payment`` /
``data: {"type": "x402.payment", "x402Version", "success", "transaction", "network", "payer",
"errorReason"?}`` (on ``/v1/messages`` without the ``event:`` line, which Anthropic's SDK would
parse). Settled before the first byte, it is also the ``PAYMENT-RESPONSE`` header.

What is charged: nothing if the model failed before its first chunk; the quote once content
flows (``exact`` cannot charge less than was signed), also when the client hangs up. The
transcript is kept with the payment: the same payment presented again gets it back.
"""

from __future__ import annotations

import asyncio
import base64
import json

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from payrouter.chain import ChainError
from payrouter.http_errors import error_body
from payrouter.journal import OPEN_STATES, State, StoredAnswer
from payrouter.store import StoreError
from payrouter.x402.asgi import json_error, send_response
from payrouter.x402.call import PaidCall
from payrouter.x402.errors import Reason
from payrouter.x402.outcomes import send_failed_after_payment
from payrouter.x402.settlement import PaymentAttempt, SettleOutcome, receipt_header, settled_outcome

__all__ = ["StreamSettlement", "receipt_event"]

# how often a stream whose payment could not be broadcast tries again
_RETRY_SECONDS = 0.25


class _Cut(Exception):
    """Raised into the streaming handler to stop it: the payment failed."""


def receipt_event(outcome: SettleOutcome, version: int, anthropic: bool) -> bytes:
    """The receipt as the stream's last SSE event."""
    data = json.loads(base64.b64decode(outcome.receipt[1]))
    payload = json.dumps({"type": "x402.payment", "x402Version": version, **data}).encode()
    # Anthropic's SDK reads every named event; an unnamed one it skips
    prefix = b"" if anthropic else b"event: x402.payment\n"
    return prefix + b"data: " + payload + b"\n\n"


def _cut_event(message: str, anthropic: bool) -> bytes:
    if anthropic:
        error = {"type": "error", "error": {"type": "payment_error", "message": message}}
        return b"event: error\ndata: " + json.dumps(error).encode() + b"\n\n"
    return b"data: " + json.dumps(error_body(message, "payment_error")).encode() + b"\n\n"


class StreamSettlement:
    """Runs a paid streaming handler and settles its payment (see the module docstring).

    Args:
        attempt: the payment this request holds.
        call: what the handler reports (content, usage, failure).
        serving: the task recording that verification passed.
        held: settle before the first byte (``before_first_byte``, or over the exposure limits).
        anthropic: the stream is ``/v1/messages``' event shape.
        prepaid: the payment already settled (a stream the model broke, served again).
    """

    def __init__(
        self,
        attempt: PaymentAttempt,
        call: PaidCall,
        serving: asyncio.Task[None],
        held: bool,
        anthropic: bool,
        prepaid: SettleOutcome | None = None,
    ) -> None:
        self.attempt = attempt
        self.call = call
        self.serving = serving
        self.held = held
        self.anthropic = anthropic
        self.policy = attempt.services.table.streaming
        self.version = attempt.payment.version
        self.status = 0
        self.start: Message | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.started = False
        self.buffering = False  # held and only pending: keep the whole answer for a replay
        self.cut = False
        self.transcript = bytearray()
        self.task: asyncio.Task[SettleOutcome] | None = None
        self.outcome: SettleOutcome | None = None
        self.prepaid = prepaid
        self.stalled = False  # the transfer could not be broadcast yet: content waits for it
        # the model failed before any content: its error waits for `model_failed` to tell
        # whether someone mined the payment meanwhile (then the payer is told so instead)
        self.failure: list[Message] = []
        self.failure_recorded = False

    async def _settle_once(self) -> SettleOutcome:
        call = self.call
        usage = self.attempt.usage_fields(call.answered_by, call.input_tokens, call.output_tokens)
        # during the stream the first chunk goes out with the broadcast: the record must say so
        # before anything can move, or a reconciler could take a cancelled transfer for a
        # stream nobody received
        delivered = "" if self.held or self.prepaid else "streaming"
        return await self.attempt.settle(None, delivered=delivered, **usage)

    async def _settle_during(self) -> SettleOutcome:
        """Settle, retrying while nothing could be broadcast, for at most ``unconfirmed_seconds``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.policy.unconfirmed_seconds
        await self.serving
        while True:
            outcome = await self._settle_once()
            retry = outcome.status == "unavailable" or (
                outcome.status == "refused" and outcome.reason == Reason.UNEXPECTED_SETTLE
            )
            if outcome.status == "pending":
                return await self._confirm(outcome, deadline)
            if not retry or loop.time() + _RETRY_SECONDS >= deadline:
                return outcome
            self.stalled = True  # no more content until the transfer is out
            await asyncio.sleep(_RETRY_SECONDS)

    async def _confirm(self, pending: SettleOutcome, deadline: float) -> SettleOutcome:
        """Follow an unconfirmed transfer from the chain until ``deadline`` (broadcasting it
        again if the node lost it); the reconciler takes over after that."""
        loop = asyncio.get_running_loop()
        attempt = self.attempt
        while loop.time() + _RETRY_SECONDS < deadline:
            await asyncio.sleep(_RETRY_SECONDS)
            try:
                record = await attempt.services.resolver.resolve(attempt.record, settle=True)
            except (ChainError, StoreError):
                continue
            attempt.record = record
            if record.state == State.SETTLED:
                return settled_outcome(record)
            # settling or owed is still undecided (a broadcast that may yet land, a record the
            # resolver left for now): only an end state may tell the payer the transfer failed
            if record.state not in OPEN_STATES:
                reason = record.reason or Reason.TRANSACTION_FAILED
                receipt = receipt_header(record, False, record.tx, reason)
                return SettleOutcome("refused", receipt, reason, "the transfer failed", record.tx)
        return pending

    def _outcome_now(self) -> SettleOutcome | None:
        if self.outcome is not None:
            return self.outcome
        if self.task is not None and self.task.done():
            return self.task.result()
        return None

    async def _first_body(self, send: Send) -> None:
        """The model's first chunk is here: start the transfer (or finish it first, if held)."""
        assert self.start is not None
        start, self.start = self.start, None
        if self.prepaid is not None:
            self.outcome = self.prepaid
            start = {**start, "headers": [*start.get("headers", []), self.prepaid.receipt]}
        elif self.held:
            with anyio.CancelScope(shield=True):
                await asyncio.shield(self.serving)
                outcome = self.outcome = await self._settle_once()
            if outcome.status == "pending":
                self.buffering = True  # the answer is kept until the payment confirms
                return
            if not outcome.ok:
                raise _Cut()
            start = {**start, "headers": [*start.get("headers", []), outcome.receipt]}
        else:
            self.task = asyncio.get_running_loop().create_task(self._settle_during())
        self.started = True
        await send(start)

    async def run(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the stream, settle its payment, record what happened."""

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.status = message["status"]
                self.headers = list(message.get("headers", []))
                if self.status >= 400 and self.prepaid is None:
                    self.failure.append(message)
                elif self.status >= 400:
                    self.started = True
                    await send(message)
                else:
                    self.start = message
                return
            if self.failure and message["type"] == "http.response.body":
                self.failure.append(message)
                if not message.get("more_body", False):
                    with anyio.CancelScope(shield=True):
                        await self._answer_failure(send)
                return
            if message["type"] != "http.response.body" or self.status >= 400:
                await send(message)
                return
            if self.start is not None:
                await self._first_body(send)
            if self.task is not None and self.stalled and not self.task.done():
                with anyio.CancelScope(shield=True):
                    await asyncio.shield(self.task)
            outcome = self._outcome_now()
            if outcome is not None and outcome.status in ("refused", "unavailable"):
                self.cut = True
                if self.started:
                    why = f"the payment failed ({outcome.reason}: {outcome.message}); the stream was cut"
                    await send(
                        {"type": "http.response.body", "body": _cut_event(why, self.anthropic), "more_body": True}
                    )
                raise _Cut()
            body = message.get("body", b"")
            self.transcript += body
            if self.buffering:
                return
            if not message.get("more_body", False):
                with anyio.CancelScope(shield=True):
                    final = self.outcome or await self._final()
                await send({"type": "http.response.body", "body": body, "more_body": True})
                message = {"type": "http.response.body", "body": receipt_event(final, self.version, self.anthropic)}
            await send(message)

        try:
            await app(scope, receive, wrapped)
        except _Cut:
            await self._after_cut(send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._finish()
        if self.buffering:
            await self._answer_pending(send)

    async def _answer_failure(self, send: Send) -> None:
        """Record the failed call (`PaymentAttempt.model_failed`), then answer with the model's
        error, or, if someone mined the payment meanwhile, with what that means for the payer."""
        await asyncio.shield(self.serving)
        await self.attempt.model_failed(self._failure_reason())
        self.failure_recorded = self.started = True
        if self.attempt.record.state == State.SETTLED:
            await send_failed_after_payment(send, self.attempt.record)
            return
        for message in self.failure:
            await send(message)

    def _failure_reason(self) -> str:
        return "upstream_failed" if self.status >= 500 or self.status == 0 else "request_failed"

    async def _final(self) -> SettleOutcome:
        assert self.task is not None
        return await asyncio.shield(self.task)

    async def _after_cut(self, send: Send) -> None:
        outcome = self._outcome_now()
        if self.started:
            if outcome is not None:
                await send({"type": "http.response.body", "body": receipt_event(outcome, self.version, self.anthropic)})
            return
        # held, and the transfer failed before anything was sent
        assert outcome is not None
        if outcome.status == "unavailable":
            await send_response(
                send, *json_error(503, "payment state store unavailable; nothing was charged", "server_error")
            )
            return
        _, err = json_error(
            402, f"settlement failed before the stream started ({outcome.reason}); nothing was charged", "payment_error"
        )
        await send_response(send, 402, err, [(b"content-type", b"application/json"), outcome.receipt])

    async def _answer_pending(self, send: Send) -> None:
        assert self.outcome is not None
        message = (
            f"settlement pending; transaction {self.outcome.transaction or 'unknown'}: your payment may still move. "
            "Present the same payment again to receive the answer once it is confirmed"
        )
        _, err = json_error(402, message, "payment_error")
        await send_response(send, 402, err, [(b"content-type", b"application/json"), self.outcome.receipt])

    def _delivered(self) -> str:
        if self.buffering:
            return "held"  # kept for the payer, never sent
        if self.cut:
            return "cut"
        if self.call.failed:
            return "broken"
        return "complete" if self.call.completed else "partial"

    async def _finish(self) -> None:
        """Record what became of the payment, with the transcript."""
        attempt, call = self.attempt, self.call
        if self.prepaid is not None and self.outcome is None:
            # served again and the model failed before its first chunk: still owed a full answer
            await attempt.write(State.SETTLED, [State.SETTLED], durable=True, delivered="broken")
            return
        if self.task is None and self.outcome is None:
            # the model never produced a first chunk: nothing was broadcast
            if not self.failure_recorded:
                await asyncio.shield(self.serving)
                await attempt.model_failed(self._failure_reason())
            return
        outcome = self._outcome_now()
        if outcome is None:
            assert self.task is not None
            outcome = await asyncio.shield(self.task)
        delivered = self._delivered()
        usage = attempt.usage_fields(call.answered_by, call.input_tokens, call.output_tokens)
        headers = [h for h in self.headers if h[0].lower() != b"content-length"]
        answer = StoredAnswer.capture(200, headers, bytes(self.transcript))
        if outcome.status == "settled":
            await attempt.finish(State.SETTLED, [State.SETTLED], answer=answer, delivered=delivered, **usage)
        elif outcome.status == "pending":
            await attempt.finish(
                State.PENDING, [State.PENDING, State.SETTLING], answer=answer, delivered=delivered, **usage
            )
        elif self.started and call.content:
            await attempt.owe(outcome.reason or Reason.UNEXPECTED_SETTLE, delivered, outcome.transaction, answer)
        else:
            await attempt.release(outcome.reason or Reason.UNEXPECTED_SETTLE)
