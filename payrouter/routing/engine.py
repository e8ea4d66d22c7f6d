"""The routing engine: rules, constraints and a strategy over predicted quality, price, latency.

For ``auto`` it scores every catalog model that satisfies the constraints and picks by the
strategy; a named model is checked against the same constraints. The decision carries every
candidate's predicted quality, price and latency, the ordered fallbacks and a short reason.
Deterministic: the same request and engine state give the same decision.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from payrouter.chat import ChatRequest
from payrouter.routing.base import DEFAULT_OUTPUT_BUDGET, Candidate, RouteDecision, RoutingError
from payrouter.routing.constraints import RouteConstraints
from payrouter.routing.predictor import QualityPredictor
from payrouter.routing.split import CONTROL, TRIAL, request_key, split_arm
from pricing import ModelPrice, PriceTable, RoutingRule, Strategy, quote_route

__all__ = ["RoutingEngine", "prompt_text"]

_PRIVACY_RANK = {"local": 0, "trusted": 1, "public": 2}
MIN_PREDICTED_BUDGET = 16
MAX_FALLBACKS = 3


@dataclass(frozen=True, slots=True)
class _Scored:
    model: ModelPrice
    quality: int  # predicted quality in basis points (0..10000), an integer so ties are exact
    budget: int
    price: int
    latency_ms: int


@dataclass(frozen=True, slots=True)
class _Predicted:
    index: dict[str, int]  # training model name -> column
    quality: Any  # P(correct) per column
    tokens: Any  # output-token budget per column


def _last_user_text(request: ChatRequest) -> str:
    for message in reversed(request.messages):
        if message.role == "user":
            content = message.content
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _prompt_text(request: ChatRequest) -> str:
    parts = []
    for message in request.messages:
        content = message.content
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts += [str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p]
    return "\n\n".join(parts)


def required_capabilities(request: ChatRequest) -> set[str]:
    """What the request needs of a model: tools, JSON mode, vision."""
    needs = set()
    if request.tools:
        needs.add("tools")
    extra: dict[str, Any] = request.model_extra or {}
    fmt = extra.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        needs.add("json")
    for message in request.messages:
        if isinstance(message.content, list) and any(
            isinstance(p, dict) and p.get("type") in ("image_url", "input_image", "image") for p in message.content
        ):
            needs.add("vision")
    return needs


class RoutingEngine:
    """Implements `payrouter.routing.Router`.

    Args:
        predictor: the learned quality predictor (None: quality profiles only).
        health: ``model_id -> healthy?``; unhealthy models are skipped while others exist.
    """

    def __init__(self, predictor: QualityPredictor | None = None, health: Callable[[str], bool] | None = None) -> None:
        self.predictor = predictor
        self.health = health or (lambda _model: True)

    def routing_state(self, table: PriceTable) -> tuple[str, ...]:
        """Implements `payrouter.routing.RouterState`: the table's models that are unhealthy now
        (everything else a decision reads is the request, the table and the fixed predictor)."""
        return tuple(m.id for m in table.models if not self.health(m.id))

    def decide(
        self,
        request: ChatRequest,
        input_tokens: int,
        table: PriceTable,
        constraints: RouteConstraints | None = None,
    ) -> RouteDecision:
        constraints = constraints or RouteConstraints()
        policy = table.routing
        auto = request.model == "auto" or request.model.startswith("auto:")
        strategy: Strategy = policy.strategy
        if request.model.startswith("auto:"):
            named = request.model.split(":", 1)[1]
            if named not in ("cost", "quality", "balanced", "latency"):
                raise RoutingError(
                    f"unknown strategy {named!r}: use auto:cost, auto:quality, auto:balanced or auto:latency"
                )
            strategy = named  # type: ignore[assignment]
        if constraints.strategy is not None:
            strategy = constraints.strategy
        only = set(constraints.only)
        forced: str | None = None if auto else request.model
        rule = self._matching_rule(request, table.routing.rules) if auto else None
        if rule is not None:
            forced = rule.model or forced
            strategy = rule.strategy or strategy
            only = (only & set(rule.only)) if only and rule.only else (only or set(rule.only))
        if forced is not None and forced not in {m.id for m in table.models}:
            raise RoutingError(f"unknown model {forced!r}; GET /v1/models lists the catalog")

        pool = [table.model(forced)] if forced is not None else list(table.models)
        pool = self._filter(pool, request, input_tokens, constraints, only)
        # one prediction per decision, shared with the fallback search of a named model
        predicted = self._predict(request, table)
        quality = self._qualities(pool, predicted)
        scored = [self._score(m, quality[m.id], request, input_tokens, table) for m in pool]
        if constraints.max_price is not None:
            within = [s for s in scored if s.price <= constraints.max_price]
            if not within:
                cheapest = min(scored, key=lambda s: s.price)
                raise RoutingError(
                    f"no model satisfies max_price {constraints.max_price}: the cheapest fitting route "
                    f"({cheapest.model.id}) costs {cheapest.price}"
                )
            scored = within
        ranked = self._rank(scored, strategy, policy.quality_floor, policy.usd_per_quality_point, table.asset.decimals)
        arm = ""
        if rule is not None and rule.split:
            trial = self._trial(rule, request, input_tokens, table, constraints, predicted)
            arm = CONTROL if trial is None else TRIAL
            if trial is not None:
                # the trial model answers first; the control arm's ranking is its fallback
                ranked = [trial, *(s for s in ranked if s.model.id != trial.model.id)]
        chosen = ranked[0]
        fallbacks = tuple(s.model.id for s in ranked[1 : 1 + MAX_FALLBACKS])
        if forced is not None and rule is None:
            reason = "model named by the caller"
            fallbacks = self._fallbacks_for_named(chosen, request, input_tokens, table, constraints, predicted)
        else:
            how = f"rule {rule.name!r}" if rule is not None else strategy
            if arm:
                how += f" ({arm} arm)"
            reason = f"{how}: predicted quality {chosen.quality / 100:.1f}, price {chosen.price}"
        return RouteDecision(
            model=chosen.model.id,
            output_tokens=chosen.budget,
            input_tokens=input_tokens,
            fallbacks=fallbacks,
            reason=reason,
            strategy=strategy if auto else "named",
            candidates=tuple(Candidate(s.model.id, s.quality, s.price, s.latency_ms, s.budget) for s in ranked),
            rule=rule.name if rule is not None else "",
            arm=arm,
        )

    def _trial(
        self,
        rule: RoutingRule,
        request: ChatRequest,
        input_tokens: int,
        table: PriceTable,
        constraints: RouteConstraints,
        predicted: _Predicted | None,
    ) -> _Scored | None:
        """The trial model this request is split to, scored; None for the control arm.

        A trial never makes a request fail: a trial model the request's constraints exclude
        (capabilities, privacy, ``only``, price cap) leaves the request in the control arm.
        """
        model_id = split_arm(rule.split, rule.name, request_key(request))
        if model_id is None or not self.health(model_id):
            return None
        try:
            pool = self._filter([table.model(model_id)], request, input_tokens, constraints, set(constraints.only))
        except RoutingError:
            return None
        trial = self._score(pool[0], self._qualities(pool, predicted)[model_id], request, input_tokens, table)
        if constraints.max_price is not None and trial.price > constraints.max_price:
            return None
        return trial

    # ---- constraints -------------------------------------------------------------------

    def _filter(
        self,
        pool: list[ModelPrice],
        request: ChatRequest,
        input_tokens: int,
        constraints: RouteConstraints,
        only: set[str],
    ) -> list[ModelPrice]:
        needs = required_capabilities(request)
        limit = request.output_limit
        privacy = constraints.privacy
        ignore = constraints.ignore
        allowed = _PRIVACY_RANK[privacy] if privacy is not None else None

        def verdicts(m: ModelPrice) -> tuple[bool, ...]:  # in the order of `labels`
            return (
                not only or m.id in only,
                m.id not in ignore,
                allowed is None or _PRIVACY_RANK[m.privacy] <= allowed,
                needs <= m.capabilities,
                limit is None or limit <= m.max_output_tokens,
                input_tokens + (limit or 1) <= m.context_window,
            )

        judged = [(m, verdicts(m)) for m in pool]
        kept = [m for m, v in judged if all(v)]
        if not kept:
            # name the first constraint, in this order, that leaves no model
            labels = (
                f"only {sorted(only)}",
                f"ignore {sorted(ignore)}",
                f"privacy {privacy}",
                f"capabilities {sorted(needs)}",
                f"max_tokens {limit} within the output limit",
                f"context window (~{input_tokens} prompt tokens + {limit or 'a'} output budget)",
            )
            for i, label in enumerate(labels):
                left = [(m, v) for m, v in judged if v[i]]
                if not left:
                    if len(judged) == 1:  # the one model the earlier constraints left
                        raise RoutingError(f"model {judged[0][0].id!r} does not satisfy the constraint: {label}")
                    raise RoutingError(f"no model satisfies the constraint: {label}")
                judged = left
        pool = kept
        healthy = [m for m in pool if self.health(m.id)]
        return healthy or pool  # all unhealthy: try anyway rather than refuse

    @staticmethod
    def _matching_rule(request: ChatRequest, rules: list[RoutingRule]) -> RoutingRule | None:
        text = _last_user_text(request)
        lowered = text.lower()
        meta = (request.model_extra or {}).get("metadata") or {}
        for rule in rules:
            if rule.keywords and not any(k.lower() in lowered for k in rule.keywords):
                continue
            if rule.regex is not None and not re.search(rule.regex, text):
                continue
            if any(not isinstance(meta, dict) or meta.get(k) != v for k, v in rule.metadata.items()):
                continue
            return rule
        return None

    # ---- prediction --------------------------------------------------------------------

    def _predict(self, request: ChatRequest, table: PriceTable) -> _Predicted | None:
        """The predictor's output for the prompt, if it knows any of the table's models."""
        if self.predictor is None or not any(m.router_name in self.predictor.index for m in table.models):
            return None
        quality, tokens = self.predictor.predict(_prompt_text(request))
        return _Predicted(self.predictor.index, quality, tokens)

    @staticmethod
    def _qualities(pool: list[ModelPrice], predicted: _Predicted | None) -> dict[str, tuple[int, int | None]]:
        """Per model: (predicted quality in basis points, predicted output tokens or None)."""
        out: dict[str, tuple[int, int | None]] = {}
        for model in pool:
            i = predicted.index.get(model.router_name or "") if predicted is not None else None
            if predicted is not None and i is not None:
                out[model.id] = (int(round(float(predicted.quality[i]) * 10_000)), int(predicted.tokens[i]))
            else:
                out[model.id] = (model.quality.get("general", 0) * 100, None)
        return out

    @staticmethod
    def _score(
        model: ModelPrice, quality: tuple[int, int | None], request: ChatRequest, input_tokens: int, table: PriceTable
    ) -> _Scored:
        room = model.context_window - input_tokens
        if request.output_limit is not None:
            budget = request.output_limit
        elif quality[1] is not None:
            budget = max(MIN_PREDICTED_BUDGET, min(quality[1], DEFAULT_OUTPUT_BUDGET))
        else:
            budget = DEFAULT_OUTPUT_BUDGET
        budget = max(1, min(budget, model.max_output_tokens, room))
        price = quote_route(table, model.id, input_tokens, budget).amount
        latency = model.first_token_ms + math.ceil(budget * 1000 / model.tokens_per_second)
        return _Scored(model, quality[0], budget, price, latency)

    @staticmethod
    def _rank(
        scored: list[_Scored], strategy: Strategy, floor: int, usd_per_point: Decimal, decimals: int
    ) -> list[_Scored]:
        floor_bp = floor * 100
        if strategy == "quality":
            return sorted(scored, key=lambda s: (-s.quality, s.price, s.model.id))
        if strategy == "cost":
            return sorted(
                scored,
                key=lambda s: (s.quality < floor_bp, s.price if s.quality >= floor_bp else -s.quality, s.model.id),
            )
        if strategy == "latency":
            return sorted(
                scored,
                key=lambda s: (s.quality < floor_bp, s.latency_ms if s.quality >= floor_bp else -s.quality, s.model.id),
            )
        # balanced: quality points minus price in "points the price could buy"; exact integers
        # (basis points x atomic-units-per-point) so the ranking has no float ties.
        units_per_point = int(usd_per_point * 10**decimals) or 1
        return sorted(scored, key=lambda s: (-(s.quality * units_per_point - 100 * s.price), s.price, s.model.id))

    def _fallbacks_for_named(
        self,
        chosen: _Scored,
        request: ChatRequest,
        input_tokens: int,
        table: PriceTable,
        constraints: RouteConstraints,
        predicted: _Predicted | None,
    ) -> tuple[str, ...]:
        # a named model fails over only to models at least as good that the same constraints allow
        try:
            pool = self._filter(
                [m for m in table.models if m.id != chosen.model.id],
                request,
                input_tokens,
                constraints,
                set(constraints.only),
            )
        except RoutingError:
            return ()
        quality = self._qualities(pool, predicted)
        # only the models at least as good need a price
        better = [
            self._score(m, quality[m.id], request, input_tokens, table)
            for m in pool
            if quality[m.id][0] >= chosen.quality
        ]
        return tuple(s.model.id for s in sorted(better, key=lambda s: (s.price, s.model.id))[:MAX_FALLBACKS])


def prompt_text(request: ChatRequest) -> str:
    """The text of every message, as the learned router reads it."""
    return _prompt_text(request)
