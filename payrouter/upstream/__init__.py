"""Upstream model providers."""

from payrouter.upstream.openai import Completion, OpenAICompatible, UpstreamError

__all__ = ["Completion", "OpenAICompatible", "UpstreamError"]
