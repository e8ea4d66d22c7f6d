"""The agent side of x402: turn a 402 offer into a signed payment header."""

from payrouter.client.payment import PaymentOfferError, build_payment_header, read_offer

__all__ = ["PaymentOfferError", "build_payment_header", "read_offer"]
