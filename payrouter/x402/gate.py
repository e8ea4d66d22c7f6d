"""The payment gate: pure ASGI middleware in front of the paid endpoints.

Unpaid request -> route, price, store the quote, answer 402.
Paid request   -> decode, match the stored quote, open the payment's journal record (what
                  makes it single-use) while verifying, run the handler, settle, answer with
                  the receipt. A failed handler settles nothing; a payment presented again
                  is answered from its record (`payrouter.x402.replay`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time

import anyio
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from payrouter.chat import InvalidRequest, parse_chat_request, parse_messages_request, request_digest
from payrouter.journal import Exposure, State, StoredAnswer
from payrouter.quoting import PricedRoute, load_quote, save_quote
from payrouter.reconciler import MAX_RECORD_LIFE_S
from payrouter.routing import ConstraintError, RouteConstraints, RoutingError
from payrouter.routing.constraints import ROUTING_HEADERS
from payrouter.services import Services
from payrouter.store import StoreError, keys
from payrouter.x402.asgi import json_error, replay_body, send_response
from payrouter.x402.call import SCOPE_KEY, PaidCall, PaidRequest
from payrouter.x402.errors import PaymentError, PaymentRejected, Reason
from payrouter.x402.outcomes import send_outcome
from payrouter.x402.replay import replay
from payrouter.x402.requirements import Requirements, Resource
from payrouter.x402.responses import payment_required
from payrouter.x402.settlement import PaymentAttempt, new_record, record_id
from payrouter.x402.streaming import StreamSettlement
from payrouter.x402.wire import PaymentPayload, decode_header, parse_payment, v1_network_name
from pricing import PricingError

__all__ = ["PaymentGate", "match_quote"]

log = logging.getLogger("payrouter.gate")

# Slack beyond the quote's lifetime for anything an authorization's validBefore drives (the
# model call's deadline, a stream's exposure entry): a far-future validBefore stretches nothing.
_CLAIM_SLACK = 120
# How long a paid response stays replayable under its payment-identifier.
_PAYMENT_ID_TTL = 24 * 3600


def match_quote(payment: PaymentPayload, req: Requirements) -> None:
    """Check that ``payment`` is for exactly the stored quote ``req``.

    Raises:
        PaymentRejected: with the reason of the first field that differs.
    """
    payer = payment.authorization.from_
    if payment.scheme != req.scheme:
        raise PaymentRejected(Reason.UNSUPPORTED_SCHEME, f"scheme {payment.scheme!r} is not offered; use exact", payer)
    expected_network = req.network if payment.version == 2 else v1_network_name(req.chain_id)
    if payment.network != expected_network:
        raise PaymentRejected(
            Reason.INVALID_NETWORK, f"network {payment.network!r} is not the quoted {expected_network!r}", payer
        )
    accepted = payment.accepted
    if accepted is not None:
        if str(accepted.get("asset", "")).lower() != req.asset.lower():
            raise PaymentRejected(Reason.INVALID_REQUIREMENTS, "accepted.asset is not the quoted asset", payer)
        if str(accepted.get("payTo", "")).lower() != req.pay_to.lower():
            raise PaymentRejected(Reason.INVALID_REQUIREMENTS, "accepted.payTo is not the quoted payTo", payer)
        if accepted.get("amount") != str(req.amount):
            raise PaymentRejected(
                Reason.VALUE_MISMATCH,
                f"accepted.amount {accepted.get('amount')!r} is not the quoted {req.amount}",
                payer,
            )
        if accepted.get("maxTimeoutSeconds") != req.max_timeout_seconds:
            raise PaymentRejected(
                Reason.INVALID_REQUIREMENTS, "accepted.maxTimeoutSeconds differs from the quote", payer
            )
        extra = accepted.get("extra") or {}
        if not isinstance(extra, dict) or (extra.get("name"), extra.get("version")) != (
            req.extra.get("name"),
            req.extra.get("version"),
        ):
            raise PaymentRejected(
                Reason.INVALID_REQUIREMENTS, "accepted.extra name/version differ from the quote", payer
            )


async def _quote(call: PaidRequest) -> PricedRoute:
    priced = call.services.quoter.price(call.request, call.constraints)
    await save_quote(call.services.store, call.digest, priced)
    return priced


async def _reject(call: PaidRequest, exc: PaymentError, send: Send) -> None:
    # Every rejection carries a fresh offer, so a client can pay correctly on its next try.
    priced = await _quote(call)
    log.info("payment rejected: %s (%s) payer=%s", exc.reason, exc.message, exc.payer)
    await send_response(send, 402, *payment_required(priced.requirements, call.resource, exc.reason, exc.message))


class PaymentGate:
    """ASGI middleware charging for ``POST`` requests to ``paid_paths``.

    Shared resources come from the lifespan state (``scope["state"]["services"]``), so the
    gate holds no global state and many workers can run behind one Redis.
    """

    def __init__(
        self, app: ASGIApp, paid_paths: frozenset[str] = frozenset({"/v1/chat/completions", "/v1/messages"})
    ) -> None:
        self.app = app
        self.paid_paths = paid_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paid_paths:
            await self.app(scope, receive, send)
            return
        services: Services = scope["state"]["services"]
        body = await _read_body(receive, services.max_body_bytes)
        if body is None:
            await send_response(
                send,
                *json_error(413, f"request body exceeds {services.max_body_bytes} bytes", "invalid_request_error"),
            )
            return
        try:
            parse = parse_messages_request if scope["path"] == "/v1/messages" else parse_chat_request
            request, raw = parse(body)
        except InvalidRequest as exc:
            await send_response(send, *json_error(400, str(exc), "invalid_request_error", exc.param))
            return
        headers = Headers(scope=scope)
        routing_headers = {h: headers[h] for h in ROUTING_HEADERS if h in headers}
        try:
            constraints = RouteConstraints.parse(request.routing, routing_headers)
        except ConstraintError as exc:
            await send_response(send, *json_error(400, str(exc), "invalid_request_error", "routing"))
            return
        resource = Resource(url=_resource_url(scope, headers, services.public_url))
        digest = request_digest("POST", scope["path"], raw, routing_headers)
        v2_header = headers.get("payment-signature")
        v1_header = headers.get("x-payment")
        call = PaidRequest(scope, receive, services, request, body, digest, resource, constraints)
        started = False
        downstream = send

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await downstream(message)

        send = watched
        try:
            try:
                if v2_header is None and v1_header is None:
                    priced = await _quote(call)
                    await send_response(send, 402, *payment_required(priced.requirements, resource))
                    return
                version = 2 if v2_header is not None else 1
                payment = parse_payment(decode_header(v2_header or v1_header or ""), version)
                if payment.payment_id is None:
                    await self._paid(call, payment, send)
                else:
                    await self._idempotent(call, payment, send)
            except PaymentRejected as exc:
                await _reject(call, exc, send)
        except (RoutingError, PricingError) as exc:
            await send_response(send, *json_error(400, str(exc), "invalid_request_error", "model"))
        except StoreError as exc:
            log.error("store unavailable: %s", exc)
            if started:  # the answer is on its way: its money is recorded by deferred writes
                return
            await send_response(
                send, *json_error(503, "payment state store unavailable; nothing was charged", "server_error")
            )

    async def _idempotent(self, call: PaidRequest, payment: PaymentPayload, send: Send) -> None:
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
            bound = await self._paid(call, payment, send)
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(StoreError):
                if bound is None:
                    record = await services.journal.get(record_id(auth.from_, auth.nonce))
                    bound = record is not None and record.state != State.RELEASED
                if not bound:
                    await services.store.release(key, binding)

    async def _paid(self, call: PaidRequest, payment: PaymentPayload, send: Send) -> bool:
        """Serve a paid request; True when its payment is spoken for (kept, not released).

        Raises:
            PaymentRejected: the payment cannot be accepted (the caller answers with an offer).
        """
        scope, services, request, digest = call.scope, call.services, call.request, call.digest
        auth = payment.authorization
        priced = await load_quote(services.store, digest)
        if priced is None:
            # a payment presented again after its quote expired: its record answers
            existing = await services.journal.get(record_id(auth.from_, auth.nonce))
            if existing is not None:
                await replay(self.app, call, payment, existing, send)
                return True
            raise PaymentRejected(
                Reason.INVALID_REQUIREMENTS,
                "no live quote for this request (expired or never issued); a fresh quote is attached",
                auth.from_,
            )
        requirements = priced.requirements
        match_quote(payment, requirements)

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
                services.facilitator.verify(payment, requirements),
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
            await replay(self.app, call, payment, opened.record, send)
            return True
        if opened.outcome == "debtor":
            raise PaymentRejected(
                Reason.PAYER_OWES,
                "this payer has a streamed answer that was never paid for; streams are refused until it is "
                "settled (non-streaming calls are still served)",
                auth.from_,
            )
        attempt = PaymentAttempt(services, payment, priced, opened.record)
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
            await settler.run(self.app, scope, replay_body(call.receive, call.body), send)
            return attempt.record.state != State.RELEASED
        status, resp_headers, resp_body = await _run(self.app, scope, call.receive, call.body)
        await serving
        with anyio.CancelScope(shield=True):  # from here on money may move: finish even if the client left
            if status >= 400:
                # The model call failed: nothing is settled, and the client may pay again.
                await attempt.refused("upstream_failed" if status >= 500 else "request_failed")
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


def _resource_url(scope: Scope, headers: Headers, public_url: str | None) -> str:
    path: str = scope["path"]
    if public_url:
        return public_url.rstrip("/") + path
    host = headers.get("host") or "localhost"
    return f"{scope.get('scheme', 'http')}://{host}{path}"


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _run(
    app: ASGIApp, scope: Scope, receive: Receive, body: bytes
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Run the handler with the already-read body; capture its whole response."""
    status = 500
    headers: list[tuple[bytes, bytes]] = []
    chunks: list[bytes] = []

    async def capture(message: Message) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status = message["status"]
            headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    try:
        await app(scope, replay_body(receive, body), capture)
    except Exception:
        log.exception("handler failed")
        return _json_error_tuple(500, "internal error while serving a paid request; nothing was charged")
    return status, headers, b"".join(chunks)


def _json_error_tuple(status: int, message: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    _, body = json_error(status, message, "server_error")
    return status, [(b"content-type", b"application/json")], body
