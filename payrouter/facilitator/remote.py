"""Remote facilitator: the x402 facilitator HTTP API (``/verify``, ``/settle``, ``/supported``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from payrouter.chain import ChainClient, ChainError
from payrouter.facilitator.base import SettleResult
from payrouter.facilitator.onchain import find_settlement
from payrouter.x402.errors import PaymentRejected, Reason, SettlementFailed, SettlementInDoubt
from payrouter.x402.requirements import Requirements, Resource
from payrouter.x402.wire import PaymentPayload

__all__ = ["RemoteFacilitator"]


class RemoteFacilitator:
    """`Facilitator` over HTTP.

    Args:
        url: base URL, e.g. ``https://facilitator.example.com`` (paths are appended).
        headers: extra headers per endpoint, keyed ``verify``, ``settle``, ``supported``
            (and ``*`` for all), e.g. an ``Authorization`` header. Their values are never logged.
        timeout: seconds per request; settlement waits for a block, so keep it generous.
        chain: read access to the chain: a settlement the facilitator reports failed is looked
            for there first (someone else may have submitted the authorization).
    """

    def __init__(
        self,
        url: str,
        headers: Mapping[str, Mapping[str, str]] | None = None,
        timeout: float = 90.0,
        client: httpx.AsyncClient | None = None,
        chain: ChainClient | None = None,
    ) -> None:
        self._chain = chain
        self._url = url.rstrip("/")
        self._headers = {k: dict(v) for k, v in (headers or {}).items()}
        self._client = client or httpx.AsyncClient(timeout=timeout)

    def __repr__(self) -> str:
        return f"RemoteFacilitator(url={self._url!r})"

    async def close(self) -> None:
        await self._client.aclose()

    def _headers_for(self, endpoint: str) -> dict[str, str]:
        return {**self._headers.get("*", {}), **self._headers.get(endpoint, {})}

    @staticmethod
    def _body(payment: PaymentPayload, requirements: Requirements) -> dict[str, Any]:
        if payment.version == 1:
            resource = Resource(url=str(payment.raw.get("resource", "")))
            reqs: dict[str, Any] | None = requirements.to_v1(resource)
        else:
            reqs = requirements.to_v2()
        return {"x402Version": payment.version, "paymentPayload": payment.raw, "paymentRequirements": reqs}

    async def post(self, endpoint: str, body: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """POST ``body`` to ``/verify`` or ``/settle``; the facilitator's x402 result object.
        ``timeout``: seconds for this request (default: the client's).

        Raises:
            httpx.HTTPError: unreachable, or the reply is no x402 result (``HTTPStatusError``).
        """
        reply = await self._client.post(
            f"{self._url}/{endpoint}",
            json=body,
            headers=self._headers_for(endpoint),
            timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
        )
        # Facilitators answer 200 for business outcomes; some send 4xx with an x402 body.
        try:
            data = reply.json()
        except ValueError:
            data = None
        if not isinstance(data, dict) or ("isValid" not in data and "success" not in data):
            raise httpx.HTTPStatusError(
                f"facilitator /{endpoint} answered HTTP {reply.status_code} without an x402 result",
                request=reply.request,
                response=reply,
            )
        return data

    async def verify(self, payment: PaymentPayload, requirements: Requirements) -> str:
        payer = payment.authorization.from_
        try:
            data = await self.post("verify", self._body(payment, requirements))
        except httpx.HTTPError as exc:
            raise PaymentRejected(Reason.UNEXPECTED_VERIFY, f"facilitator unreachable: {exc}", payer) from None
        if data.get("isValid") is True:
            return str(data.get("payer") or payer)
        reason = str(data.get("invalidReason") or Reason.UNEXPECTED_VERIFY)
        message = str(data.get("invalidMessage") or "facilitator rejected the payment")
        raise PaymentRejected(reason, message, payer)

    async def settle(self, payment: PaymentPayload, requirements: Requirements) -> SettleResult:
        payer = payment.authorization.from_
        body = self._body(payment, requirements)
        data: dict[str, Any] = {}
        # One retry on settlement_pending, as the reference middleware does: the facilitator
        # then reconciles the already-broadcast transaction instead of sending another.
        for _attempt in range(2):
            try:
                data = await self.post("settle", body)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                raise SettlementFailed(Reason.UNEXPECTED_SETTLE, f"facilitator unreachable: {exc}", payer) from None
            except httpx.HTTPError as exc:
                # it may have broadcast before the reply was lost
                raise SettlementInDoubt(f"facilitator reply lost: {exc}", payer) from None
            if data.get("success") is True:
                return SettleResult(
                    transaction=str(data.get("transaction", "")),
                    payer=str(data.get("payer") or payer),
                    network=str(data.get("network") or requirements.network),
                )
            if data.get("errorReason") != Reason.SETTLEMENT_PENDING:
                break
        if data.get("errorReason") == Reason.SETTLEMENT_PENDING:
            message = str(data.get("errorMessage") or "broadcast, not confirmed yet")
            raise SettlementInDoubt(message, payer, str(data.get("transaction") or ""))
        reason = str(data.get("errorReason") or Reason.UNEXPECTED_SETTLE)
        if self._chain is not None:
            # the facilitator may report a front-run as its own failure: the chain knows better
            try:
                front_run = await find_settlement(self._chain, payment, requirements)
            except ChainError as exc:
                raise SettlementInDoubt(f"{reason}; the chain could not be searched ({exc})", payer) from None
            if front_run is not None:
                return SettleResult(transaction=front_run, payer=payer, network=requirements.network)
        raise SettlementFailed(
            reason,
            str(data.get("errorMessage") or "facilitator could not settle"),
            payer,
            str(data.get("transaction") or ""),
        )

    async def supported(self) -> dict[str, Any]:
        reply = await self._client.get(f"{self._url}/supported", headers=self._headers_for("supported"))
        reply.raise_for_status()
        data: dict[str, Any] = reply.json()
        return data
