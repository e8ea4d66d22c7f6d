"""The ``exact`` scheme: one EIP-3009 transfer of the quoted amount per call.

Paid request -> match the quote it presents (sealed in its offer), open the payment's journal record (what makes it
single-use) while verifying, run the handler, settle, answer with the receipt. A failed
handler settles nothing; a payment presented again is answered from its record
(`payrouter.x402.replay`). Streams settle while they run (`payrouter.x402.streaming`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time

import anyio
from starlette.types import Send

from payrouter import metrics
from payrouter.journal import Exposure, State, StoredAnswer
from payrouter.metrics import calls as observed
from payrouter.metrics.timing import timed
from payrouter.quoting import PricedRoute
from payrouter.reconciler import MAX_RECORD_LIFE_S
from payrouter.store import StoreError, keys
from payrouter.x402.asgi import json_error, replay_body, run_handler, send_response
from payrouter.x402.call import SCOPE_KEY, PaidCall, PaidRequest
from payrouter.x402.errors import PaymentRejected, Reason
from payrouter.x402.outcomes import send_failed_after_payment, send_outcome
from payrouter.x402.replay import replay
from payrouter.x402.requirements import Requirements
from payrouter.x402.schemes.base import match_terms, presented_quote
from payrouter.x402.settlement import PaymentAttempt, new_record, record_id
from payrouter.x402.streaming import StreamSettlement
from payrouter.x402.wire import Envelope, PaymentPayload, exact_payment

__all__ = ["EXACT", "ExactScheme"]

log = logging.getLogger("payrouter.gate")

EXACT = "exact"
# Slack beyond the quote's lifetime for anything an authorization's validBefore drives (the
# model call's deadline, a stream's exposure entry): a far-future validBefore stretches nothing.
_CLAIM_SLACK = 120
_VERIFY_SECONDS = metrics.VERIFY_SECONDS.labels(scheme=EXACT)
# How long a paid response stays replayable under its payment-identifier.
_PAYMENT_ID_TTL = 24 * 3600


def _match_token(payment: PaymentPayload, req: Requirements) -> None:
    accepted = payment.accepted
    if accepted is None:
        return
    extra = accepted.get("extra") or {}
    if not isinstance(extra, dict) or (extra.get("name"), extra.get("version")) != (
        req.extra.get("name"),
        req.extra.get("version"),
    ):
        raise PaymentRejected(
            Reason.INVALID_REQUIREMENTS,
            "accepted.extra name/version differ from the quote",
            payment.authorization.from_,
        )


class ExactScheme:
    """`Scheme` ``exact``: the quote is the charge, settled on chain before (or, for streams,
    while) the answer goes out, through ``services.facilitator``."""

    name = EXACT

    def offer(self, priced: PricedRoute) -> Requirements:
        return priced.requirements

    async def serve(self, call: PaidRequest, envelope: Envelope, send: Send) -> None:
        payment = exact_payment(envelope)
        if payment.payment_id is None:
            await self._paid(call, envelope, payment, send)
        else:
            await self._idempotent(call, envelope, payment, send)

    async def _idempotent(self, call: PaidRequest, envelope: Envelope, payment: PaymentPayload, send: Send) -> None:
        """x402 payment-identifier: one id, one payment, one charge.

        The id is bound to its payment and request; the same id with anything else is a 409.
        The same id with the same payment is that payment presented again, which the journal
        answers (its answer once paid, no second charge, no second model call). An id whose
        payment came to nothing (released) is free again.
        """
        services = call.services
        auth = payment.authorization
        assert payment.payment_id is not None
        key = keys.payment_id(auth.from_, payment.payment_id)
        binding = f"{payment.fingerprint()}:{call.digest}"
        if not await services.store.claim(key, binding, _PAYMENT_ID_TTL):
            _, err = json_error(409, "this payment id was already used for another payment or request", "conflict")
            await send_response(send, 409, err)
            return
        bound: bool | None = None  # None: the request ended in an error, the journal knows
        try:
            bound = await self._paid(call, envelope, payment, send)
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(StoreError):
                if bound is None:
                    record = await services.journal.get(record_id(auth.from_, auth.nonce))
                    bound = record is not None and record.state != State.RELEASED
                if not bound:
                    await services.store.release(key, binding)

    async def _paid(self, call: PaidRequest, envelope: Envelope, payment: PaymentPayload, send: Send) -> bool:
        """Serve a paid request; True when its payment is spoken for (kept, not released).

        Raises:
            PaymentRejected: the payment cannot be accepted (the caller answers with an offer).
        """
        scope, services, request, digest = call.scope, call.services, call.request, call.digest
        auth = payment.authorization
        priced = await presented_quote(call, envelope)
        if priced is None:
            # a payment presented again after its quote expired: its record answers
            existing = await services.journal.get(record_id(auth.from_, auth.nonce))
            if existing is not None:
                await replay(call.app, call, payment, existing, send)
                return True
            raise PaymentRejected(
                Reason.INVALID_REQUIREMENTS,
                "no live quote for this request (expired or never issued); a fresh quote is attached",
                auth.from_,
            )
        requirements = priced.requirements
        match_terms(envelope, requirements, auth.from_)
        _match_token(payment, requirements)

        table = services.table
        record = new_record(payment, priced, digest, scope["path"], request.stream, secrets.token_hex(16))
        exposure = None
        if request.stream and table.streaming.settlement == "during_stream":
            per_payer, total = table.unconfirmed_limits()
            # the entry goes when the record leaves the unconfirmed states; its own expiry only
            # covers a worker that died, and lasts as long as the record may stay open
            expires = min(auth.valid_before, int(time.time()) + MAX_RECORD_LIFE_S)
            exposure = Exposure(requirements.amount, per_payer, total, expires * 1000)
        # Opening the record is what makes a payment single-use; verification only reads the
        # chain, so both run at once (one store round trip less before the model call starts).
        try:
            opened, verified = await asyncio.gather(
                services.journal.open(record, exposure),
                timed(services.facilitator.verify(payment, requirements), _VERIFY_SECONDS),
                return_exceptions=True,
            )
        except BaseException:  # cancelled (client gone): give our claim back if it was taken
            with anyio.CancelScope(shield=True), contextlib.suppress(StoreError):
                gone = record.moved(State.RELEASED, reason="client_gone")
                await services.journal.advance(gone, [State.CLAIMED])
            raise
        if isinstance(opened, BaseException):
            raise opened
        if opened.outcome == "existing":
            await replay(call.app, call, payment, opened.record, send)
            return True
        if opened.outcome == "debtor":
            raise PaymentRejected(
                Reason.PAYER_OWES,
                "this payer has a streamed answer that was never paid for; streams are refused until it is "
                "settled (non-streaming calls are still served)",
                auth.from_,
            )
        attempt = PaymentAttempt(services, payment, priced, opened.record)
        observed.holds(scope, attempt)
        if isinstance(verified, BaseException):
            reason = verified.reason if isinstance(verified, PaymentRejected) else Reason.UNEXPECTED_VERIFY
            with anyio.CancelScope(shield=True):
                await attempt.refused(reason)
            raise verified
        # the model call must leave time to settle before the authorization expires (and a
        # far-future validBefore must not stretch anything we keep: D5)
        deadline = min(auth.valid_before, int(time.time()) + table.max_timeout_seconds + _CLAIM_SLACK)
        paid = PaidCall(request=request, route=priced, payer=verified, deadline=deadline)
        scope[SCOPE_KEY] = paid
        serving = asyncio.create_task(attempt.serving())
        if request.stream:
            held = opened.held or table.streaming.settlement == "before_first_byte"
            settler = StreamSettlement(attempt, paid, serving, held=held, anthropic=scope["path"] == "/v1/messages")
            await settler.run(call.app, scope, replay_body(call.receive, call.body), send)
            return attempt.record.state != State.RELEASED
        status, resp_headers, resp_body = await run_handler(call.app, scope, call.receive, call.body, call.endpoint)
        await serving
        with anyio.CancelScope(shield=True):  # from here on money may move: finish even if the client left
            if status >= 400:
                # The model call failed: nothing is settled, and the client may pay again.
                await attempt.model_failed("upstream_failed" if status >= 500 else "request_failed")
                if attempt.record.state == State.SETTLED:  # someone mined the payment meanwhile
                    await send_failed_after_payment(send, attempt.record)
                    return True
                await send_response(send, status, resp_body, resp_headers)
                return False
            usage = attempt.usage_fields(paid.answered_by, paid.input_tokens, paid.output_tokens)
            answer = StoredAnswer.capture(status, resp_headers, resp_body)
            outcome = await attempt.settle(answer, delivered="complete", **usage)
            if outcome.status == "refused":
                await attempt.release(outcome.reason or Reason.UNEXPECTED_SETTLE)
            elif outcome.status == "unavailable":
                with contextlib.suppress(StoreError):
                    await attempt.release(Reason.UNEXPECTED_SETTLE)
            await send_outcome(send, outcome, answer)
        return attempt.record.state != State.RELEASED
