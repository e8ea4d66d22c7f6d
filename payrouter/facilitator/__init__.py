"""Verification and settlement of x402 payments behind one `Facilitator` protocol."""

from payrouter.facilitator.base import Facilitator, SettleResult
from payrouter.facilitator.local import LocalFacilitator
from payrouter.facilitator.remote import RemoteFacilitator

__all__ = ["Facilitator", "LocalFacilitator", "RemoteFacilitator", "SettleResult"]
