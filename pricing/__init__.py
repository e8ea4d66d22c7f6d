"""pricing: the operator's price table and integer quote arithmetic.

Pure library: no web framework, no Redis, no I/O besides reading a TOML file on request.
Amounts are ``int`` atomic units of the table's asset; prices are decimal strings; no float
is ever involved.
"""

from pricing.errors import PriceTableError, PricingError, RouteDoesNotFitError, UnknownModelError
from pricing.money import ceil_fraction, parse_decimal, usd_to_atomic
from pricing.quote import Charge, Quote, charge_for_usage, quote_route
from pricing.table import (
    Asset,
    Capability,
    ChannelTerms,
    ModelPrice,
    PriceTable,
    Privacy,
    RoutingPolicy,
    RoutingRule,
    Scheme,
    Strategy,
    StreamingPolicy,
    load_price_table,
    parse_price_table,
)
from pricing.tokens import estimate_chat_input_tokens, estimate_text_tokens

__all__ = [
    "Asset",
    "Capability",
    "ChannelTerms",
    "Charge",
    "ModelPrice",
    "PriceTable",
    "PriceTableError",
    "PricingError",
    "Privacy",
    "Quote",
    "RouteDoesNotFitError",
    "RoutingPolicy",
    "RoutingRule",
    "Scheme",
    "Strategy",
    "StreamingPolicy",
    "UnknownModelError",
    "ceil_fraction",
    "charge_for_usage",
    "estimate_chat_input_tokens",
    "estimate_text_tokens",
    "load_price_table",
    "parse_decimal",
    "parse_price_table",
    "quote_route",
    "usd_to_atomic",
]
