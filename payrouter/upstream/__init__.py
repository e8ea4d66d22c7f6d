"""Upstream model providers, one module each, behind the `Provider` protocol."""

from payrouter.upstream.anthropic import AnthropicMessages
from payrouter.upstream.openai import Completion, OpenAICompatible, UpstreamError, UpstreamStream
from payrouter.upstream.provider import Provider

__all__ = ["AnthropicMessages", "Completion", "OpenAICompatible", "Provider", "UpstreamError", "UpstreamStream"]
