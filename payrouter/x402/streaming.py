"""Settling a paid stream: before its first byte, or after its last."""

from __future__ import annotations

import base64
import json
from typing import Any

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from payrouter.x402.asgi import json_error, send_response
from payrouter.x402.responses import settlement_header
from payrouter.x402.settlement import ClaimedPayment, SettleOutcome

__all__ = ["SCOPE_KEY", "StreamSettlement"]


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

    def __init__(self, claim: ClaimedPayment, anthropic: bool = False) -> None:
        self.claim = claim
        self.requirements = claim.priced.requirements
        self.mode = (
            "before_first_byte" if claim.services.table.streaming.settlement == "before_first_byte" else "after_stream"
        )
        self.anthropic = anthropic  # the receipt event in /v1/messages' shape
        self.status = 0
        self.held: Message | None = None
        self.started = False
        self.settled: bool | None = None  # None: not attempted

    async def _settle(self) -> SettleOutcome:
        # A client hanging up cancels the streaming task; a settlement must never be cut in half.
        with anyio.CancelScope(shield=True):
            outcome = await self.claim.settle()
        self.settled = outcome.ok
        return outcome

    async def _release(self) -> None:
        with anyio.CancelScope(shield=True):
            await self.claim.release()

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
                outcome = await self._settle()
                if not outcome.ok:
                    raise _SettlementAborted(outcome.receipt[1].decode())
                held, self.held = self.held, None
                held = {**held, "headers": [*held.get("headers", []), outcome.receipt]}
                self.started = True
                await send(held)
            final = not message.get("more_body", False)
            if final and self.mode == "after_stream" and self.settled is None:
                if _billable(state):
                    event = json.loads(base64.b64decode((await self._settle()).receipt[1]))
                else:  # the model failed mid-stream: a failed call charges nothing
                    await self._release()
                    self.settled = False
                    event = {"success": False, "transaction": "", "network": self.requirements.network}
                    event["errorReason"] = "upstream_failed"
                version = self.claim.payment.version
                payload = json.dumps({"type": "x402.payment", "x402Version": version, **event}).encode()
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
                name, value = settlement_header(
                    self.claim.payment.version, False, self.requirements.network, self.claim.payer
                )
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
            await self._release()
            return
        # content went out but the stream never finished (client hung up): the quote is owed
        await self._settle()


def _billable(state: dict[str, Any]) -> bool:
    """The model produced content and did not fail (a client hang-up still counts as billable)."""
    return bool(state.get("content") or state.get("completed")) and not state.get("failed")
