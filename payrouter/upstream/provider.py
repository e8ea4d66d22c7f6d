"""The `Provider` protocol: what the upstream pool needs from a model API adapter."""

from __future__ import annotations

from typing import Any, Protocol

from payrouter.upstream.openai import Completion, UpstreamStream

__all__ = ["Provider"]


class Provider(Protocol):
    """A model API. Requests and answers are OpenAI-shaped whatever the provider speaks."""

    async def chat(self, request: dict[str, Any], upstream_model: str, max_tokens: int) -> Completion:
        """One completion; raises `UpstreamError` (``retryable`` says whether to fail over)."""
        ...

    async def stream(self, request: dict[str, Any], upstream_model: str, max_tokens: int) -> UpstreamStream:
        """A streaming completion, returned once its first chunk has arrived."""
        ...
