"""The payment gate: pure ASGI middleware in front of the paid endpoints.

Unpaid request -> route, price, store the quote, answer 402.
Paid request   -> decode, match the stored quote, claim the payment, verify, run the
                  handler, settle, answer with the receipt. A failed handler releases the
                  claim and settles nothing; a payment is claimed at most once.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import time
from typing import Any

import anyio
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from payrouter.chat import ChatRequest, InvalidRequest, parse_chat_request, parse_messages_request, request_digest
from payrouter.quoting import PricedRoute
from payrouter.routing import ConstraintError, RouteConstraints, RoutingError
from payrouter.routing.constraints import ROUTING_HEADERS
from payrouter.services import Services
from payrouter.store import StoreError
from payrouter.x402.errors import PaymentError, PaymentRejected, Reason, SettlementFailed
from payrouter.x402.requirements import Requirements, Resource
from payrouter.x402.responses import payment_required, settlement_header
from payrouter.x402.wire import PaymentPayload, decode_header, parse_payment, v1_network_name
from pricing import PricingError

__all__ = ["PaymentGate", "match_quote"]

log = logging.getLogger("payrouter.gate")

SCOPE_KEY = "payrouter"
# A claim outlives the authorization it guards: once validBefore passes, the token itself
# refuses the authorization, so the claim is no longer needed.
_CLAIM_SLACK = 120
# How long a paid response stays replayable under its payment-identifier.
_PAYMENT_ID_TTL = 24 * 3600


def _json_error(status: int, message: str, kind: str, param: str | None = None) -> tuple[int, bytes]:
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return status, json.dumps(body).encode()


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    hdrs = list(headers or [(b"content-type", b"application/json")])
    hdrs.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body})


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
            await _send(
                send,
                *_json_error(413, f"request body exceeds {services.max_body_bytes} bytes", "invalid_request_error"),
            )
            return
        try:
            parse = parse_messages_request if scope["path"] == "/v1/messages" else parse_chat_request
            request, raw = parse(body)
        except InvalidRequest as exc:
            await _send(send, *_json_error(400, str(exc), "invalid_request_error", exc.param))
            return
        headers = Headers(scope=scope)
        routing_headers = {h: headers[h] for h in ROUTING_HEADERS if h in headers}
        try:
            constraints = RouteConstraints.parse(request.routing, routing_headers)
        except ConstraintError as exc:
            await _send(send, *_json_error(400, str(exc), "invalid_request_error", "routing"))
            return
        resource = Resource(url=_resource_url(scope, headers, services.public_url))
        digest = request_digest("POST", scope["path"], raw, routing_headers)
        v2_header = headers.get("payment-signature")
        v1_header = headers.get("x-payment")
        try:
            try:
                if v2_header is None and v1_header is None:
                    priced = await self._quote(services, request, constraints, digest)
                    await _send(send, 402, *_swap(payment_required(priced.requirements, resource)))
                    return
                version = 2 if v2_header is not None else 1
                payment = parse_payment(decode_header(v2_header or v1_header or ""), version)
                if payment.payment_id is None:
                    await self._paid(scope, receive, send, services, request, body, digest, payment, resource)
                else:
                    await self._idempotent(scope, receive, send, services, request, body, digest, payment, resource)
            except PaymentRejected as exc:
                await self._reject(send, services, request, constraints, digest, resource, exc)
        except (RoutingError, PricingError) as exc:
            await _send(send, *_json_error(400, str(exc), "invalid_request_error", "model"))
        except StoreError as exc:
            log.error("store unavailable: %s", exc)
            await _send(send, *_json_error(503, "payment state store unavailable; nothing was charged", "server_error"))

    async def _idempotent(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        services: Services,
        request: ChatRequest,
        body: bytes,
        digest: str,
        payment: PaymentPayload,
        resource: Resource,
    ) -> None:
        """x402 payment-identifier: one id, one payment, one charge.

        The same id with the same payment and request gets the first successful response
        again, with no second charge and no second model call; the same id with anything else
        is a 409, as is a retry while the first attempt is still running.
        """
        key = f"pid:{payment.authorization.from_.lower()}:{payment.payment_id}"
        fingerprint = f"{payment.fingerprint()}:{digest}"
        owner = json.dumps({"fp": fingerprint, "token": secrets.token_hex(8)})
        if not await services.store.claim(key, owner, _PAYMENT_ID_TTL):
            existing = await services.store.get(key)
            record = json.loads(existing) if existing else {}
            if record.get("fp") != fingerprint:
                _, err = _json_error(409, "this payment id was already used for another payment or request", "conflict")
                await _send(send, 409, err)
            elif "response" not in record:
                _, err = _json_error(409, "a request with this payment id is still being served", "conflict")
                await _send(send, 409, err)
            else:
                cached = record["response"]
                headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in cached["headers"]]
                await _send(send, cached["status"], base64.b64decode(cached["body"]), headers)
            return
        captured: dict[str, Any] = {"status": 0, "headers": [], "body": b""}

        async def tee(message: Message) -> None:
            if message["type"] == "http.response.start":
                captured["status"] = message["status"]
                captured["headers"] = message.get("headers", [])
            elif message["type"] == "http.response.body":
                captured["body"] += message.get("body", b"")
            await send(message)

        try:
            await self._paid(scope, receive, tee, services, request, body, digest, payment, resource)
        finally:
            if captured["status"] == 200:
                response = {
                    "status": 200,
                    "headers": [
                        (k.decode("latin-1"), v.decode("latin-1"))
                        for k, v in captured["headers"]
                        if k.lower() != b"content-length"
                    ],
                    "body": base64.b64encode(captured["body"]).decode(),
                }
                record_text = json.dumps({"fp": fingerprint, "response": response})
                await services.store.replace(key, owner, record_text, _PAYMENT_ID_TTL)
            else:
                await services.store.release(key, owner)

    async def _quote(
        self, services: Services, request: ChatRequest, constraints: RouteConstraints, digest: str
    ) -> PricedRoute:
        priced = services.quoter.price(request, constraints)
        await services.store.put(f"quote:{digest}", priced.to_record(), priced.requirements.max_timeout_seconds)
        return priced

    async def _reject(
        self,
        send: Send,
        services: Services,
        request: ChatRequest,
        constraints: RouteConstraints,
        digest: str,
        resource: Resource,
        exc: PaymentError,
    ) -> None:
        # Every rejection carries a fresh offer, so a client can pay correctly on its next try.
        priced = await self._quote(services, request, constraints, digest)
        log.info("payment rejected: %s (%s) payer=%s", exc.reason, exc.message, exc.payer)
        await _send(send, 402, *_swap(payment_required(priced.requirements, resource, exc.reason, exc.message)))

    async def _paid(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        services: Services,
        request: ChatRequest,
        body: bytes,
        digest: str,
        payment: PaymentPayload,
        resource: Resource,
    ) -> None:
        record = await services.store.get(f"quote:{digest}")
        if record is None:
            raise PaymentRejected(
                Reason.INVALID_REQUIREMENTS,
                "no live quote for this request (expired or never issued); a fresh quote is attached",
                payment.authorization.from_,
            )
        priced = PricedRoute.from_record(record)
        requirements = priced.requirements
        match_quote(payment, requirements)

        auth = payment.authorization
        claim_key = f"payment:{auth.from_.lower()}:{auth.nonce.hex()}"
        owner = secrets.token_hex(16)
        ttl = max(auth.valid_before - int(time.time()), 0) + _CLAIM_SLACK
        if not await services.store.claim(claim_key, owner, ttl):
            raise PaymentRejected(Reason.NONCE_USED, "this payment was already presented", auth.from_)
        try:
            payer = await services.facilitator.verify(payment, requirements)
        except BaseException:
            await services.store.release(claim_key, owner)
            raise

        # the model call must leave time to settle before the authorization expires
        scope[SCOPE_KEY] = {"request": request, "route": priced, "payer": payer, "deadline": auth.valid_before}
        if request.stream:
            settler = _StreamSettlement(services, payment, requirements, priced, payer, claim_key, owner, ttl, digest)
            settler.anthropic = scope["path"] == "/v1/messages"
            await settler.run(self.app, scope, _replay(receive, body), send)
            return
        status, resp_headers, resp_body = await _run(self.app, scope, receive, body)
        if status >= 400:
            # The model call failed: nothing is settled, and the client may pay again.
            await services.store.release(claim_key, owner)
            await _send(send, status, resp_body, resp_headers)
            return
        try:
            settled = await services.facilitator.settle(payment, requirements)
        except SettlementFailed as exc:
            await self._settlement_failed(send, services, payment, requirements, payer, claim_key, owner, ttl, exc)
            return
        except Exception:
            log.exception("settlement crashed")
            await services.store.release(claim_key, owner)
            await _send(send, *_json_error(503, "settlement unavailable; nothing was charged", "server_error"))
            return
        # The money moved: record it, but a store hiccup now must not hide the answer paid for.
        try:
            await asyncio.gather(
                services.store.replace(claim_key, owner, f"settled:{settled.transaction}", ttl),
                services.store.append_ledger(
                    _ledger_entry(payer, priced, settled.network, settled.transaction, digest)
                ),
            )
        except StoreError as exc:
            log.error("payment %s settled in %s but not recorded: %s", claim_key, settled.transaction, exc)
        receipt = settlement_header(payment.version, True, requirements.network, payer, settled.transaction)
        resp_headers = [h for h in resp_headers if h[0].lower() not in (b"cache-control", b"content-length")]
        resp_headers += [receipt, (b"cache-control", b"private, no-store")]
        await _send(send, status, resp_body, resp_headers)

    async def _settlement_failed(
        self,
        send: Send,
        services: Services,
        payment: PaymentPayload,
        requirements: Requirements,
        payer: str,
        claim_key: str,
        owner: str,
        ttl: int,
        exc: SettlementFailed,
    ) -> None:
        if exc.reason == Reason.SETTLEMENT_PENDING:
            # Broadcast but unconfirmed: keep the claim so the payment cannot be presented again.
            await services.store.replace(claim_key, owner, f"pending:{exc.transaction}", ttl)
        else:
            await services.store.release(claim_key, owner)
        log.warning("settlement failed: %s (%s) tx=%s", exc.reason, exc.message, exc.transaction)
        name, value = settlement_header(
            payment.version, False, requirements.network, payer, exc.transaction, exc.reason
        )
        _, err = _json_error(402, f"settlement failed ({exc.reason}): {exc.message}", "payment_error")
        await _send(send, 402, err, [(b"content-type", b"application/json"), (name, value)])


def _ledger_entry(payer: str, priced: PricedRoute, network: str, transaction: str, digest: str) -> dict[str, str]:
    return {
        "payer": payer,
        "amount": str(priced.requirements.amount),
        "upstream_cost": str(priced.quote.upstream_cost),
        "model": priced.decision.model,
        "network": network,
        "transaction": transaction,
        "request": digest,
        "at": str(int(time.time())),
    }


def _replay(receive: Receive, body: bytes) -> Receive:
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class _SettlementAborted(Exception):
    """Raised into a streaming handler when settlement before the first byte failed."""


class _StreamSettlement:
    """Settles a paid stream at the operator's chosen moment.

    ``before_first_byte``: the response start is held until the model's first chunk exists,
    then the payment is settled and the receipt goes out in ``PAYMENT-RESPONSE``; if it fails,
    the client gets a 402 and the stream is dropped.
    ``after_stream``: chunks flow at once; after ``data: [DONE]`` one more event carries the
    receipt: ``event: x402.payment`` / ``data: {"x402Version", "success", "transaction",
    "network", "payer", "errorReason"?}``. SDKs stop reading at ``[DONE]`` and ignore it.

    What is charged: nothing if the model produced no content (a stream that failed or was
    abandoned before any token); the quote otherwise, even if the client hung up mid-stream,
    because ``exact`` cannot charge less than the amount signed for.
    """

    def __init__(
        self,
        services: Services,
        payment: PaymentPayload,
        requirements: Requirements,
        priced: PricedRoute,
        payer: str,
        claim_key: str,
        owner: str,
        ttl: int,
        digest: str,
    ) -> None:
        self.services = services
        self.payment = payment
        self.requirements = requirements
        self.priced = priced
        self.payer = payer
        self.claim_key = claim_key
        self.owner = owner
        self.ttl = ttl
        self.digest = digest
        self.mode = services.table.streaming_settlement
        self.anthropic = False
        self.status = 0
        self.held: Message | None = None
        self.started = False
        self.settled: bool | None = None  # None: not attempted

    async def _settle(self) -> tuple[bool, bytes, bytes]:
        # A client hanging up cancels the streaming task; a settlement must never be cut in half.
        with anyio.CancelScope(shield=True):
            outcome = await self._settle_unshielded()
        return outcome

    async def _settle_unshielded(self) -> tuple[bool, bytes, bytes]:
        store = self.services.store
        try:
            result = await self.services.facilitator.settle(self.payment, self.requirements)
        except SettlementFailed as exc:
            if exc.reason == Reason.SETTLEMENT_PENDING:
                await store.replace(self.claim_key, self.owner, f"pending:{exc.transaction}", self.ttl)
            else:
                await store.release(self.claim_key, self.owner)
            name, value = settlement_header(
                self.payment.version, False, self.requirements.network, self.payer, exc.transaction, exc.reason
            )
            self.settled = False
            return False, name, value
        try:
            await asyncio.gather(
                store.replace(self.claim_key, self.owner, f"settled:{result.transaction}", self.ttl),
                store.append_ledger(
                    _ledger_entry(self.payer, self.priced, result.network, result.transaction, self.digest)
                ),
            )
        except StoreError as exc:
            log.error("payment %s settled in %s but not recorded: %s", self.claim_key, result.transaction, exc)
        name, value = settlement_header(
            self.payment.version, True, self.requirements.network, self.payer, result.transaction
        )
        self.settled = True
        return True, name, value

    async def run(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        state: dict[str, Any] = {}

        async def wrapped(message: Message) -> None:
            nonlocal state
            state = scope[SCOPE_KEY].get("stream") or {}
            if message["type"] == "http.response.start":
                self.status = message["status"]
                if self.status < 400 and self.mode == "before_first_byte":
                    self.held = message
                    return
                self.started = True
                await send(message)
                return
            if message["type"] != "http.response.body" or self.status >= 400:
                await send(message)
                return
            if self.held is not None:
                ok, name, value = await self._settle()
                if not ok:
                    raise _SettlementAborted(value.decode())
                held, self.held = self.held, None
                held = {**held, "headers": [*held.get("headers", []), (name, value)]}
                self.started = True
                await send(held)
            final = not message.get("more_body", False)
            if final and self.mode == "after_stream" and self.settled is None:
                if _billable(state):
                    _, _, value = await self._settle()
                    event = json.loads(base64.b64decode(value))
                else:  # the model failed mid-stream: a failed call charges nothing
                    with anyio.CancelScope(shield=True):
                        await self.services.store.release(self.claim_key, self.owner)
                    self.settled = False
                    event = {"success": False, "transaction": "", "network": self.requirements.network}
                    event["errorReason"] = "upstream_failed"
                payload = json.dumps({"type": "x402.payment", "x402Version": self.payment.version, **event}).encode()
                await send({"type": "http.response.body", "body": message.get("body", b""), "more_body": True})
                # Anthropic's SDK reads every named event; an unnamed one it skips, so the
                # receipt goes out unnamed there (its data still says "type": "x402.payment")
                prefix = b"" if self.anthropic else b"event: x402.payment\n"
                message = {"type": "http.response.body", "body": prefix + b"data: " + payload + b"\n\n"}
            await send(message)

        try:
            await app(scope, receive, wrapped)
        except _SettlementAborted as exc:
            if not self.started:
                name, value = settlement_header(self.payment.version, False, self.requirements.network, self.payer)
                _, err = _json_error(
                    402, "settlement failed before the stream started; nothing was charged", "payment_error"
                )
                await _send(
                    send,
                    402,
                    err,
                    [(b"content-type", b"application/json"), (name, exc.args[0].encode() if exc.args else value)],
                )
            return
        finally:
            await self._finish(scope[SCOPE_KEY].get("stream") or {})

    async def _finish(self, state: dict[str, Any]) -> None:
        if self.settled is not None:
            return
        if self.status >= 400 or not _billable(state):
            # the model produced nothing billable: charge nothing, the payment stays usable
            await self.services.store.release(self.claim_key, self.owner)
            return
        # content went out but the stream never finished (client hung up): the quote is owed
        await self._settle()


def _billable(state: dict[str, Any]) -> bool:
    """The model produced content and did not fail (a client hang-up still counts as billable)."""
    return bool(state.get("content") or state.get("completed")) and not state.get("failed")


def _swap(pair: tuple[list[tuple[bytes, bytes]], bytes]) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    headers, body = pair
    return body, headers


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
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

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
        await app(scope, replay, capture)
    except Exception:
        log.exception("handler failed")
        return _json_error_tuple(500, "internal error while serving a paid request; nothing was charged")
    return status, headers, b"".join(chunks)


def _json_error_tuple(status: int, message: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    _, body = _json_error(status, message, "server_error")
    return status, [(b"content-type", b"application/json")], body


def route_of(scope: Scope) -> dict[str, Any]:
    """What the gate attached for the handler: ``request``, ``route`` and ``payer``."""
    data = scope[SCOPE_KEY]
    assert isinstance(data, dict), "route_of() called outside the payment gate"
    return data
