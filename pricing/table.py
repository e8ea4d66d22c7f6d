"""The operator's price table: typed, validated, loaded from TOML.

See ``examples/prices.toml`` for every field with its meaning. Prices are USD decimal
strings per million tokens; the asset is a USD stablecoin, so one USD is
``10**asset.decimals`` atomic units.
"""

from __future__ import annotations

import re
import tomllib
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from eth_typing import ChecksumAddress
from eth_utils.address import is_address, is_checksum_address, to_checksum_address
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from pricing.errors import PriceTableError, UnknownModelError
from pricing.money import parse_decimal, usd_to_atomic

__all__ = [
    "Asset",
    "Capability",
    "ChannelTerms",
    "Scheme",
    "Privacy",
    "RoutingPolicy",
    "RoutingRule",
    "StreamingPolicy",
    "Strategy",
    "ModelPrice",
    "PriceTable",
    "load_price_table",
    "parse_price_table",
]

Capability = Literal["tools", "vision", "json", "streaming", "reasoning"]
Privacy = Literal["local", "trusted", "public"]
Strategy = Literal["cost", "quality", "balanced", "latency"]
Scheme = Literal["exact", "batch-settlement"]
_CAIP2_EVM = re.compile(r"^eip155:[1-9]\d{0,18}$")
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")


def _address(value: object) -> ChecksumAddress:
    if not isinstance(value, str) or not is_address(value):
        raise ValueError("must be a 0x-prefixed 20-byte hex address")
    if value != value.lower() and value[2:] != value[2:].upper() and not is_checksum_address(value):
        raise ValueError("mixed-case address fails its EIP-55 checksum (a typo?)")
    return to_checksum_address(value)


def _network(value: str) -> str:
    if not _CAIP2_EVM.match(value):
        raise ValueError('must be a CAIP-2 EVM network like "eip155:8453"')
    return value


def _model_id(value: str) -> str:
    if not _MODEL_ID.match(value):
        raise ValueError("must be 1-128 characters of letters, digits and ._:/- starting with a letter or digit")
    if value == "auto" or value.startswith("auto:"):
        raise ValueError('"auto" and "auto:*" are reserved for the router')
    return value


Address = Annotated[ChecksumAddress, BeforeValidator(_address)]
Usd = Annotated[Decimal, BeforeValidator(parse_decimal)]
Ratio = Annotated[Decimal, BeforeValidator(parse_decimal)]
NonEmpty = Annotated[StrictStr, Field(min_length=1, max_length=200)]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Asset(_Frozen):
    """The stablecoin payments are made in.

    Attributes:
        address: token contract address.
        decimals: token decimals (USDC: 6).
        name: the token's EIP-712 domain name, sent to clients as ``extra.name``.
        version: the token's EIP-712 domain version, sent as ``extra.version``.
    """

    address: Address
    decimals: Annotated[StrictInt, Field(ge=0, le=36)] = 6
    name: NonEmpty = "USD Coin"
    version: NonEmpty = "2"


class ModelPrice(_Frozen):
    """One routable model and what it costs.

    Attributes:
        id: the catalog id clients name in ``model`` (``auto`` is reserved).
        provider: which configured upstream serves it.
        upstream_model: the provider's own name for the model.
        input_per_mtok: upstream USD price per million input tokens.
        output_per_mtok: upstream USD price per million output tokens.
        markup: fraction added on top of upstream cost (``"0.2"`` = +20%).
        request_fee: flat USD fee added per request.
        min_charge: the least a request costs, in USD.
        context_window: input plus output tokens the model accepts.
        max_output_tokens: the most output tokens one request may buy.
        capabilities: what the model can do (tools, vision, json, streaming, reasoning).
        quality: quality profile, task name -> score 0..100 (``general`` at least).
        router_name: the model's name in the routing training data (``M`` of ``M|score``), so
            the learned predictor's estimate is used; without it the quality profile is.
        privacy: ``local`` (runs on the operator's hardware), ``trusted`` (contracted
            provider), or ``public``; a caller may restrict routing to a tier.
        first_token_ms, tokens_per_second: typical latency, for the latency strategy.
    """

    id: Annotated[StrictStr, AfterValidator(_model_id)]
    provider: NonEmpty
    upstream_model: NonEmpty
    input_per_mtok: Usd
    output_per_mtok: Usd
    markup: Annotated[Ratio, Field(le=Decimal(100))] = Decimal(0)
    request_fee: Usd = Decimal(0)
    min_charge: Usd = Decimal(0)
    context_window: Annotated[StrictInt, Field(gt=0, le=100_000_000)]
    max_output_tokens: Annotated[StrictInt, Field(gt=0)]
    capabilities: frozenset[Capability] = frozenset()
    quality: dict[StrictStr, Annotated[StrictInt, Field(ge=0, le=100)]] = Field(default_factory=dict)
    router_name: NonEmpty | None = None
    privacy: Privacy = "public"
    first_token_ms: Annotated[StrictInt, Field(ge=0, le=600_000)] = 500
    tokens_per_second: Annotated[StrictInt, Field(gt=0, le=100_000)] = 50

    @model_validator(mode="after")
    def _limits(self) -> ModelPrice:
        if self.max_output_tokens > self.context_window:
            raise ValueError("max_output_tokens cannot exceed context_window")
        if "general" not in self.quality:
            raise ValueError('quality must include a "general" score (0..100)')
        return self


Percent = Annotated[StrictInt, Field(ge=1, le=100)]


class RoutingRule(_Frozen):
    """An operator rule: when a request matches, route it as the rule says.

    A request matches when every condition given holds: any of ``keywords`` (case-insensitive)
    in the last user message, ``regex`` found in it, and every ``metadata`` key equal in the
    request's ``metadata`` object. The first matching rule applies.

    ``split`` sends a share of the matching requests to models under trial: ``{"new-model" =
    10}`` routes 10% of them (chosen by a digest of the request, so the same request always
    lands in the same arm) to ``new-model`` (the "trial" arm); the rest (the "control" arm)
    are routed by the rule's other effects, or by the strategy when it has none. A rule whose
    only effect is a split may have no condition: it then splits every ``auto`` request.
    """

    name: NonEmpty
    keywords: list[StrictStr] = Field(default_factory=list)
    regex: StrictStr | None = None
    metadata: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    model: StrictStr | None = None
    strategy: Strategy | None = None
    only: list[StrictStr] = Field(default_factory=list)
    split: dict[StrictStr, Percent] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _effect(self) -> RoutingRule:
        if not (self.keywords or self.regex or self.metadata or self.split):
            raise ValueError("a rule needs at least one condition (keywords, regex or metadata)")
        if not (self.model or self.strategy or self.only or self.split):
            raise ValueError("a rule needs an effect (model, strategy, only or split)")
        if sum(self.split.values()) > 100:
            raise ValueError(f"split shares add up to {sum(self.split.values())}%, more than 100%")
        if self.model is not None and self.model in self.split:
            raise ValueError(f"split: {self.model!r} is the rule's own model (the control arm), not a trial")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"regex does not compile: {exc}") from None
        return self


class RoutingPolicy(_Frozen):
    """How ``auto`` chooses.

    Attributes:
        strategy: default for ``auto`` (callers may say ``auto:cost`` etc.).
        quality_floor: predicted quality (0..100) the cost and latency strategies must reach.
        usd_per_quality_point: the balanced strategy pays up to this much (USD) for one more
            point of predicted quality.
        predictor: a trained router file (``payrouter router train``), relative to the table.
        rules: operator rules, tried in order before any strategy.
    """

    strategy: Strategy = "balanced"
    quality_floor: Annotated[StrictInt, Field(ge=0, le=100)] = 70
    usd_per_quality_point: Usd = Decimal("0.0002")
    predictor: StrictStr | None = None
    rules: list[RoutingRule] = Field(default_factory=list)


class StreamingPolicy(_Frozen):
    """How ``stream: true`` answers are paid for, and how much unconfirmed money they may risk.

    Attributes:
        settlement: ``during_stream`` (default) starts the transfer when the model's first chunk
            is ready and streams at once; the stream is cut (an SSE error event and a failed
            receipt) if the transfer fails or is not confirmed within ``unconfirmed_seconds``.
            ``before_first_byte`` holds the response until the transfer is mined (receipt in
            the ``PAYMENT-RESPONSE`` header; adds one block to the time to first token).
        max_unconfirmed_per_payer: USD of quotes one payer may have streaming on unconfirmed
            payments; beyond it their streams wait for the transfer before the first byte.
        max_unconfirmed_total: the same across all payers.
        unconfirmed_seconds: how long a stream may run on a payment that is not yet confirmed.
    """

    settlement: Literal["during_stream", "before_first_byte"] = "during_stream"
    max_unconfirmed_per_payer: Usd = Decimal("1")
    max_unconfirmed_total: Usd = Decimal("100")
    unconfirmed_seconds: Annotated[StrictInt, Field(ge=1, le=600)] = 15


class ChannelTerms(_Frozen):
    """The terms of the ``batch-settlement`` channels payers open with us.

    Attributes:
        withdraw_delay: seconds between a payer asking to withdraw a channel's balance and
            being able to take it (our window to claim what we charged); the contract allows
            900 s to 30 days.
        min_deposit: the least USD a payer deposits into a new channel (or tops up by);
            small deposits mean more on-chain deposits per call served.
    """

    withdraw_delay: Annotated[StrictInt, Field(ge=900, le=2_592_000)] = 86_400
    min_deposit: Usd = Decimal("1")

    def min_deposit_atomic(self, decimals: int) -> int:
        """``min_deposit`` in atomic units (rounded up: never below the operator's minimum)."""
        amount = usd_to_atomic(self.min_deposit, decimals)
        return -(-amount.numerator // amount.denominator)


def _default_schemes() -> list[Scheme]:
    return ["exact"]


def _schemes(value: list[Scheme]) -> list[Scheme]:
    if len(set(value)) != len(value):
        raise ValueError("a scheme is listed more than once")
    return value


class PriceTable(_Frozen):
    """The operator's whole price table.

    Attributes:
        network: CAIP-2 id of the chain payments settle on (``eip155:<chainId>``).
        pay_to: address that receives payments.
        asset: the stablecoin.
        default_model: the model tools use when none is named (e.g. ``payrouter prices quote``).
        max_timeout_seconds: how long a quote (and the signed payment) stays valid.
        models: the catalog.
        routing: how ``auto`` chooses.
        streaming: when streams are paid, and the limits on unconfirmed exposure.
        schemes: the x402 schemes offered, preferred first: ``exact`` (one on-chain transfer
            of the quote per call) and ``batch-settlement`` (payment channels: a voucher per
            call, charged the price of the tokens used).
        channels: the terms of ``batch-settlement`` channels.
    """

    network: Annotated[StrictStr, AfterValidator(_network)]
    pay_to: Address
    asset: Asset
    default_model: StrictStr
    max_timeout_seconds: Annotated[StrictInt, Field(ge=30, le=86_400)] = 300
    models: Annotated[list[ModelPrice], Field(min_length=1)]
    routing: RoutingPolicy = Field(default_factory=RoutingPolicy)
    streaming: StreamingPolicy = Field(default_factory=StreamingPolicy)
    schemes: Annotated[list[Scheme], Field(min_length=1), AfterValidator(_schemes)] = Field(
        default_factory=_default_schemes
    )
    channels: ChannelTerms = Field(default_factory=ChannelTerms)
    _by_id: dict[str, ModelPrice] = PrivateAttr(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        if isinstance(data, dict) and "streaming_settlement" in data:
            raise ValueError(
                "streaming_settlement moved to [streaming] settlement; its old default after_stream was removed "
                'because it let a payer take a whole stream for free (use "during_stream" or "before_first_byte")'
            )
        return data

    @model_validator(mode="after")
    def _catalog(self) -> PriceTable:
        by_id: dict[str, ModelPrice] = {}
        for model in self.models:
            if model.id in by_id:
                raise ValueError(f"model id {model.id!r} appears more than once")
            by_id[model.id] = model
        if self.default_model not in by_id:
            raise ValueError(f"default_model {self.default_model!r} is not one of the models")
        for rule in self.routing.rules:
            for named in [rule.model, *rule.only, *rule.split]:
                if named is not None and named not in by_id:
                    raise ValueError(f"routing rule {rule.name!r} names unknown model {named!r}")
        self._by_id = by_id
        return self

    def on_chain(self, network: str, asset_address: str, pay_to: str) -> PriceTable:
        """The same catalog and prices, paid on another chain, token and recipient (validated).

        Raises:
            PriceTableError: one of the new values is invalid.
        """
        data = self.model_dump(mode="json")
        data.update(network=network, pay_to=pay_to)
        data["asset"]["address"] = asset_address
        return parse_price_table(data, source="<on_chain>")

    def unconfirmed_limits(self) -> tuple[int, int]:
        """``(per payer, total)`` unconfirmed stream exposure limits in atomic units (rounded down)."""
        policy, decimals = self.streaming, self.asset.decimals
        per_payer = usd_to_atomic(policy.max_unconfirmed_per_payer, decimals)
        total = usd_to_atomic(policy.max_unconfirmed_total, decimals)
        return per_payer.numerator // per_payer.denominator, total.numerator // total.denominator

    @property
    def chain_id(self) -> int:
        """The EVM chain id from ``network``."""
        return int(self.network.split(":", 1)[1])

    @cached_property
    def by_id(self) -> dict[str, ModelPrice]:
        """The catalog keyed by model id (built once per table)."""
        return dict(self._by_id)

    def model(self, model_id: str) -> ModelPrice:
        """The catalog entry for ``model_id``.

        Raises:
            UnknownModelError: no model has that id.
        """
        try:
            return self.by_id[model_id]
        except KeyError:
            raise UnknownModelError(model_id) from None


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith("function-") or part in ("tagged-union",):
            continue
        else:
            path += f".{part}" if path else part
    return path or "<table>"


_MESSAGES = {
    "missing": "required field is missing",
    "extra_forbidden": "unknown field (check the spelling)",
}


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for error in exc.errors(include_url=False):
        message = _MESSAGES.get(error["type"]) or str(error["msg"]).removeprefix("Value error, ")
        problems.append((_field_path(tuple(error["loc"])), message))
    return problems


def parse_price_table(data: dict[str, Any], source: str = "<data>") -> PriceTable:
    """Validate a price table given as plain data (as parsed from TOML or JSON).

    Raises:
        PriceTableError: listing every invalid field by its path, e.g. ``models[1].markup``.
    """
    try:
        return PriceTable.model_validate(data)
    except ValidationError as exc:
        raise PriceTableError(source, _problems(exc)) from None


def load_price_table(path: str | Path) -> PriceTable:
    """Load and validate a TOML price table.

    Raises:
        PriceTableError: the file is unreadable, not TOML, or has invalid fields.
    """
    source = str(path)
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise PriceTableError(source, [("<file>", f"cannot read: {exc.strerror}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise PriceTableError(source, [("<toml>", str(exc))]) from None
    table = parse_price_table(data, source)
    predictor = table.routing.predictor
    if predictor is not None and not Path(predictor).is_absolute():
        # a router file named in the table is found next to the table
        routing = table.routing.model_copy(update={"predictor": str(Path(path).parent / predictor)})
        table = table.model_copy(update={"routing": routing})
    return table
