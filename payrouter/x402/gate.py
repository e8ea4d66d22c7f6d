"""The payment gate: pure ASGI middleware in front of the paid endpoints.

It runs the handshake every scheme shares (`payrouter.x402.schemes`):

Unpaid request -> route, price, seal the quote into the offer, answer 402 with every offered scheme.
Paid request   -> decode the envelope, pick the scheme it names, let the scheme verify,
                  reserve, run the handler, charge or release, and answer with the receipt.
A rejected payment gets a fresh offer; errors become responses here and nowhere else.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from payrouter.chat import InvalidRequest
from payrouter.metrics import calls as observed
from payrouter.quoting import PricedRoute
from payrouter.routing import ConstraintError, RoutingError
from payrouter.services import Services
from payrouter.store import StoreError
from payrouter.x402.asgi import Endpoint, json_error, send_response
from payrouter.x402.call import PaidRequest, resource_url
from payrouter.x402.errors import PaymentError, PaymentRejected, Reason
from payrouter.x402.requirements import Requirements, Resource
from payrouter.x402.responses import payment_required
from payrouter.x402.schemes.base import Refunds
from payrouter.x402.unpaid_limit import client_of, over_limit
from payrouter.x402.wire import decode_header, parse_envelope
from pricing import PricingError

__all__ = ["PaymentGate", "offers"]

log = logging.getLogger("payrouter.gate")


def offers(
    services: Services, priced: PricedRoute, scheme: str | None = None, extra: dict[str, Any] | None = None
) -> list[Requirements]:
    """Every offered scheme's requirements for ``priced``, in the operator's preference order;
    ``extra`` is merged into ``scheme``'s (a corrective offer)."""
    out = []
    for s in services.schemes.values():
        req = s.offer(priced)
        if extra and s.name == scheme:
            req = req.with_extra(extra)
        out.append(req)
    return out


async def _quote(call: PaidRequest) -> PricedRoute:
    priced = call.services.quoter.price(call.request, call.constraints, call.digest)
    observed.quoted(call.scope["path"], priced.decision, call.services.schemes)
    return await call.services.quotes.seal(call.digest, priced)


async def _limited(call: PaidRequest, send: Send, why: str = "") -> bool:
    """Take an unpaid request's token; when the client has none left, answer 429 and say so."""
    refused = over_limit(call.services.unpaid_limit, call.scope, why)
    if refused is not None:
        await send_response(send, *refused)
    return refused is not None


async def _reject(call: PaidRequest, exc: PaymentError, scheme: str | None, send: Send) -> None:
    # Every rejection carries a fresh offer, so a client can pay correctly on its next try.
    # It costs the client an unpaid token first, even for a malformed request (whose 400 comes
    # next, from reading its constraints): a refused payment is unpaid work.
    if await _limited(call, send, f"payment refused: {exc.reason} ({exc.message})"):
        log.info("payment rejected: %s (%s) payer=%s", exc.reason, exc.message, exc.payer)
        return
    call.constraints  # noqa: B018
    priced = await _quote(call)
    observed.refused(call.scope, scheme, exc.reason, exc.message, exc.payer, priced)
    log.info("payment rejected: %s (%s) payer=%s", exc.reason, exc.message, exc.payer)
    extra = exc.offer_extra if isinstance(exc, PaymentRejected) else None
    await send_response(
        send,
        402,
        *payment_required(offers(call.services, priced, scheme, extra), call.resource, exc.reason, exc.message),
    )


class PaymentGate:
    """ASGI middleware charging for ``POST`` requests to ``paid_paths``.

    Shared resources come from the lifespan state (``scope["state"]["services"]``), so the
    gate holds no global state and many workers can run behind one Redis.

    Args:
        app: the rest of the stack (the paid handlers behind their router).
        paid_paths: the paths that are paid for.
        endpoints: the paid paths' own endpoints, called directly once a payment holds
            (`payrouter.x402.asgi.run_handler`); a paid path without one goes through ``app``.
    """

    def __init__(
        self,
        app: ASGIApp,
        paid_paths: frozenset[str] = frozenset({"/v1/chat/completions", "/v1/messages"}),
        endpoints: Mapping[str, Endpoint] | None = None,
    ) -> None:
        self.app = app
        self.paid_paths = paid_paths
        self.endpoints = dict(endpoints or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paid_paths or scope["method"] not in ("POST", "GET"):
            await self.app(scope, receive, send)
            return
        services: Services = scope["state"]["services"]
        if scope["method"] == "GET":
            refunds = _refunds(services)
            if refunds is None:
                await self.app(scope, receive, send)
            else:
                await _refund(scope, services, refunds, send)
            return
        body = await _read_body(receive, services.max_body_bytes)
        if body is None:
            await send_response(
                send,
                *json_error(413, f"request body exceeds {services.max_body_bytes} bytes", "invalid_request_error"),
            )
            return
        headers = Headers(scope=scope)
        v2_header = headers.get("payment-signature")
        v1_header = headers.get("x-payment")
        # the request is parsed when first read: a scheme may start its store round trip first
        call = PaidRequest(self.app, scope, receive, services, body, headers, self.endpoints.get(scope["path"]))
        started = False
        downstream = send

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await downstream(message)

        send = watched
        scheme_name: str | None = None
        try:
            try:
                if v2_header is None and v1_header is None:
                    call.constraints  # noqa: B018  # a malformed request is a 400 before any limit
                    if await _limited(call, send):
                        return
                    priced = await _quote(call)
                    await send_response(send, 402, *payment_required(offers(services, priced), call.resource))
                    return
                version = 2 if v2_header is not None else 1
                envelope = parse_envelope(decode_header(v2_header or v1_header or ""), version)
                scheme = services.schemes.get(envelope.scheme)
                if scheme is None:
                    raise PaymentRejected(
                        Reason.UNSUPPORTED_SCHEME,
                        f"scheme {envelope.scheme!r} is not offered; offered: {', '.join(services.schemes)}",
                    )
                scheme_name = scheme.name
                try:
                    await scheme.serve(call, envelope, send)
                finally:  # the digest is known once the scheme has read the request
                    observed.scheme_chosen(scope, scheme_name, call.digest if call.parsed else "")
                if services.unpaid_limit is not None:  # a payer's quote was not unpaid work
                    services.unpaid_limit.give_back(client_of(scope))
            except PaymentRejected as exc:
                await _reject(call, exc, scheme_name, send)
        except InvalidRequest as exc:
            await send_response(send, *json_error(400, str(exc), "invalid_request_error", exc.param))
        except ConstraintError as exc:
            await send_response(send, *json_error(400, str(exc), "invalid_request_error", "routing"))
        except (RoutingError, PricingError) as exc:
            await send_response(send, *json_error(400, str(exc), "invalid_request_error", "model"))
        except StoreError as exc:
            log.error("store unavailable: %s", exc)
            if started:  # the answer is on its way: its money is recorded by deferred writes
                return
            await send_response(
                send, *json_error(503, "payment state store unavailable; nothing was charged", "server_error")
            )


def _refunds(services: Services) -> Refunds | None:
    for scheme in services.schemes.values():
        if isinstance(scheme, Refunds):
            return scheme
    return None


async def _refund(scope: Scope, services: Services, refunds: Refunds, send: Send) -> None:
    """``GET`` of a paid URL: the refund handshake (a probe without payment gets the terms)."""
    headers = Headers(scope=scope)
    resource = Resource(url=resource_url(scope, headers, services.public_url), description="Channel refund")
    offer = [refunds.refund_offer()]
    value = headers.get("payment-signature")
    try:
        if value is None:
            message = "GET of a paid URL asks for a channel refund: send a batch-settlement refund payload"
            await send_response(send, 402, *payment_required(offer, resource, message=message))
            return
        await refunds.refund(parse_envelope(decode_header(value), 2), send)
    except PaymentRejected as exc:
        log.info("refund refused: %s (%s) payer=%s", exc.reason, exc.message, exc.payer)
        await send_response(send, 402, *payment_required(offer, resource, exc.reason, exc.message))
    except StoreError as exc:
        log.error("store unavailable: %s", exc)
        await send_response(
            send, *json_error(503, "payment state store unavailable; nothing was refunded", "server_error")
        )


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
