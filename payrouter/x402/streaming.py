"""Settling a paid stream: before its first byte, or after its last."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from typing import Any

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from payrouter.quoting import PricedRoute
from payrouter.services import Services
from payrouter.store import StoreError
from payrouter.x402.asgi import json_error, ledger_entry, send_response
from payrouter.x402.errors import Reason, SettlementFailed
from payrouter.x402.requirements import Requirements
from payrouter.x402.responses import settlement_header
from payrouter.x402.wire import PaymentPayload

__all__ = ["SCOPE_KEY", "StreamSettlement"]

log = logging.getLogger("payrouter.gate")

SCOPE_KEY = "payrouter"


class _SettlementAborted(Exception):
    """Raised into a streaming handler when settlement before the first byte failed."""


class StreamSettlement:
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
        anthropic: bool = False,
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
        self.anthropic = anthropic  # the receipt event in /v1/messages' shape
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
                    ledger_entry(self.payer, self.priced, result.network, result.transaction, self.digest)
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
                _, err = json_error(
                    402, "settlement failed before the stream started; nothing was charged", "payment_error"
                )
                await send_response(
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
