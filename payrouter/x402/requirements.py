"""Payment requirements: what one quote asks the client to sign, in v2 and v1 form."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from payrouter.x402.wire import v1_network_name

__all__ = ["Requirements", "Resource"]


@dataclass(frozen=True, slots=True)
class Resource:
    """What is being paid for (x402 ``ResourceInfo``)."""

    url: str
    description: str = "Routed chat completion"
    mime_type: str = "application/json"

    def to_wire(self) -> dict[str, str]:
        """The v2 ``resource`` object."""
        return {"url": self.url, "description": self.description, "mimeType": self.mime_type}


@dataclass(frozen=True, slots=True)
class Requirements:
    """One EVM payment option (``exact`` or ``batch-settlement``).

    Attributes:
        network: CAIP-2 network (``eip155:<chainId>``).
        amount: the price in atomic units.
        asset: token address.
        pay_to: recipient address.
        max_timeout_seconds: how long the quote (and so the signed payment) is valid.
        extra: scheme data: the token's EIP-712 ``name``/``version``, plus our route and price.
    """

    network: str
    amount: int
    asset: str
    pay_to: str
    max_timeout_seconds: int
    extra: dict[str, Any] = field(default_factory=dict)
    scheme: str = "exact"

    def with_extra(self, extra: dict[str, Any]) -> Requirements:
        """A copy whose ``extra`` also holds ``extra``."""
        return replace(self, extra={**self.extra, **extra})

    @property
    def chain_id(self) -> int:
        """The EVM chain id of ``network``."""
        return int(self.network.split(":", 1)[1])

    def to_v2(self) -> dict[str, Any]:
        """The v2 ``PaymentRequirements`` object."""
        return {
            "scheme": self.scheme,
            "network": self.network,
            "amount": str(self.amount),
            "asset": self.asset,
            "payTo": self.pay_to,
            "maxTimeoutSeconds": self.max_timeout_seconds,
            "extra": self.extra,
        }

    def to_v1(self, resource: Resource) -> dict[str, Any] | None:
        """The v1 ``PaymentRequirements`` object, or None when v1 cannot express it (the network
        has no v1 name, or the scheme is newer than v1)."""
        name = v1_network_name(self.chain_id)
        if name is None or self.scheme != "exact":
            return None
        return {
            "scheme": self.scheme,
            "network": name,
            "maxAmountRequired": str(self.amount),
            "asset": self.asset,
            "payTo": self.pay_to,
            "resource": resource.url,
            "description": resource.description,
            "mimeType": resource.mime_type,
            "maxTimeoutSeconds": self.max_timeout_seconds,
            "extra": self.extra,
        }

    @classmethod
    def from_v2(cls, obj: dict[str, Any]) -> Requirements:
        """Rebuild from the v2 object (as stored with a quote)."""
        return cls(
            network=obj["network"],
            amount=int(obj["amount"]),
            asset=obj["asset"],
            pay_to=obj["payTo"],
            max_timeout_seconds=int(obj["maxTimeoutSeconds"]),
            extra=dict(obj.get("extra") or {}),
            scheme=obj.get("scheme", "exact"),
        )
