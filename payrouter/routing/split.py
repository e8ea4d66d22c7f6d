"""Traffic splits: which arm of a rule's ``split`` a request falls in, from its digest."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from payrouter.chat import ChatRequest

__all__ = ["CONTROL", "TRIAL", "request_key", "split_arm"]

CONTROL = "control"
TRIAL = "trial"
_BUCKETS = 10_000  # basis points: shares are whole percents, so every share is exact


def request_key(request: ChatRequest) -> bytes:
    """A digest of the whole request (messages, parameters, metadata): the same request always
    gets the same key, so a quote and its paid retry fall in the same arm."""
    return hashlib.sha256(request.model_dump_json(exclude_none=True).encode()).digest()


def split_arm(split: Mapping[str, int], rule: str, key: bytes) -> str | None:
    """The trial model a request with ``key`` is sent to under ``rule``'s ``split`` (model ->
    percent), or None for the control arm.

    The rule's name is hashed in, so two rules splitting the same traffic pick independent
    samples. Shares are taken in the split's order; a share of 10 catches 10% of keys.
    """
    point = int.from_bytes(hashlib.sha256(rule.encode() + b"\0" + key).digest()[:8], "big") % _BUCKETS
    edge = 0
    for model, percent in split.items():
        edge += percent * (_BUCKETS // 100)
        if point < edge:
            return model
    return None
