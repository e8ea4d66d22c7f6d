"""Token estimates for OpenAI-style chat requests, without a tokenizer download.

A quote is a maximum, so the estimate leans high rather than low: about four characters
of English per token, one token per non-ASCII character (CJK text is roughly one token per
character; accented Latin is over-counted slightly), plus OpenAI's per-message overheads.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["IMAGE_TOKENS", "estimate_chat_input_tokens", "estimate_text_tokens"]

TOKENS_PER_MESSAGE = 4  # role and delimiters around each message
TOKENS_PER_REPLY = 3  # the assistant reply is primed with <|start|>assistant<|message|>
TOKENS_PER_NAME = 1
# A high-detail 1024x1024 image costs 765 tokens with GPT-4-class vision models; without
# fetching the image its size is unknown, so every image is priced at that size.
IMAGE_TOKENS = 765


def estimate_text_tokens(text: str) -> int:
    """Estimated tokens in ``text``: ceil(ASCII chars / 4) + non-ASCII chars."""
    if not text:
        return 0
    ascii_chars = len(text.encode("ascii", "ignore"))
    other = len(text) - ascii_chars
    return -(-ascii_chars // 4) + other


def _content_tokens(content: Any) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return estimate_text_tokens(content)
    if isinstance(content, Iterable) and not isinstance(content, bytes | Mapping):
        total = 0
        for part in content:
            if isinstance(part, Mapping) and part.get("type") in ("image_url", "input_image", "image"):
                total += IMAGE_TOKENS
            elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
                total += estimate_text_tokens(part["text"])
            else:
                total += _json_tokens(part)
        return total
    return _json_tokens(content)


def _json_tokens(value: Any) -> int:
    return estimate_text_tokens(json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str))


def estimate_chat_input_tokens(
    messages: Iterable[Mapping[str, Any]], tools: Iterable[Mapping[str, Any]] | None = None
) -> int:
    """Estimate the prompt tokens of a chat completion request.

    Args:
        messages: OpenAI ``messages``: ``role``, ``content`` (string or list of parts),
            optional ``name``, ``tool_calls``.
        tools: OpenAI ``tools`` definitions, counted as their compact JSON.

    Returns:
        A non-negative estimate, meant to be at or above what the provider will count.
    """
    total = TOKENS_PER_REPLY
    for message in messages:
        total += TOKENS_PER_MESSAGE + _content_tokens(message.get("content"))
        if message.get("name"):
            total += TOKENS_PER_NAME + estimate_text_tokens(str(message["name"]))
        if message.get("tool_calls"):
            total += _json_tokens(message["tool_calls"])
    if tools:
        total += _json_tokens(list(tools))
    return total
