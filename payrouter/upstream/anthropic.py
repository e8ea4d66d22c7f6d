"""The Anthropic Messages API as a provider, behind the same interface as OpenAI-compatible ones.

Requests arrive in OpenAI's chat shape and are translated both ways: system messages become
``system``, tools and tool calls become ``tools`` / ``tool_use`` / ``tool_result`` blocks,
and the answer (or the event stream) comes back as OpenAI completions (or chunks). Usage is
exact, cached prompt tokens included.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from payrouter.upstream.openai import Completion, UpstreamError, UpstreamStream, _JsonApi

__all__ = ["AnthropicMessages", "to_anthropic", "to_openai_completion"]

API_VERSION = "2023-06-01"
_STOP = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls"}


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content or []:
        if part.get("type") == "text":
            blocks.append({"type": "text", "text": part.get("text", "")})
        elif part.get("type") == "image_url":
            url = str((part.get("image_url") or {}).get("url", ""))
            if url.startswith("data:") and ";base64," in url:
                media, data = url[5:].split(";base64,", 1)
                blocks.append({"type": "image", "source": {"type": "base64", "media_type": media, "data": data}})
            else:
                blocks.append({"type": "image", "source": {"type": "url", "url": url}})
    return blocks


def tool_use_block(call: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI ``tool_calls`` entry as an Anthropic ``tool_use`` block (unparseable arguments -> ``{}``)."""
    fn = call.get("function") or {}
    try:
        arguments = json.loads(fn.get("arguments") or "{}")
    except ValueError:
        arguments = {}
    return {"type": "tool_use", "id": call.get("id") or "", "name": fn.get("name") or "", "input": arguments}


def to_anthropic(request: dict[str, Any], model: str, max_tokens: int) -> dict[str, Any]:
    """An OpenAI chat request as an Anthropic Messages request."""
    system: list[str] = []
    messages: list[dict[str, Any]] = []

    def append(role: str, blocks: list[dict[str, Any]]) -> None:
        if messages and messages[-1]["role"] == role:  # Anthropic wants alternating roles
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})

    for message in request.get("messages", []):
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(_text(message.get("content")))
        elif role == "tool":
            result = {
                "type": "tool_result",
                "tool_use_id": message.get("tool_call_id", ""),
                "content": _text(message.get("content")),
            }
            append("user", [result])
        elif role == "assistant":
            blocks = _blocks(message.get("content"))
            blocks += [tool_use_block(call) for call in message.get("tool_calls") or []]
            append("assistant", blocks)
        else:
            append("user", _blocks(message.get("content")))
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "messages": messages}
    if system:
        body["system"] = "\n\n".join(system)
    for key in ("temperature", "top_p"):
        if key in request:
            body[key] = request[key]
    if request.get("stop"):
        stop = request["stop"]
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if request.get("tools"):
        body["tools"] = [
            {
                "name": t["function"]["name"],
                "description": t["function"].get("description", ""),
                "input_schema": t["function"].get("parameters") or {"type": "object", "properties": {}},
            }
            for t in request["tools"]
            if t.get("type") == "function"
        ]
        choice = request.get("tool_choice")
        if choice == "required":
            body["tool_choice"] = {"type": "any"}
        elif isinstance(choice, dict) and choice.get("type") == "function":
            body["tool_choice"] = {"type": "tool", "name": choice["function"]["name"]}
        elif choice == "none":
            body["tool_choice"] = {"type": "none"}
    return body


def _usage(usage: dict[str, Any]) -> dict[str, Any]:
    cached = int(usage.get("cache_read_input_tokens") or 0)
    written = int(usage.get("cache_creation_input_tokens") or 0)
    prompt = int(usage.get("input_tokens") or 0) + cached + written
    completion = int(usage.get("output_tokens") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "cache_creation_tokens": written},
    }


def to_openai_completion(data: dict[str, Any], model: str) -> dict[str, Any]:
    """An Anthropic Messages response as an OpenAI chat completion."""
    text = "".join(b.get("text", "") for b in data.get("content", []) if b.get("type") == "text")
    calls = [
        {
            "id": b["id"],
            "type": "function",
            "function": {"name": b["name"], "arguments": json.dumps(b.get("input", {}))},
        }
        for b in data.get("content", [])
        if b.get("type") == "tool_use"
    ]
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": data.get("id", ""),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": message, "finish_reason": _STOP.get(data.get("stop_reason") or "", "stop")}
        ],
        "usage": _usage(data.get("usage") or {}),
    }


class AnthropicMessages(_JsonApi):
    """Calls ``POST {base_url}/v1/messages`` with an ``x-api-key``.

    Args:
        base_url: e.g. ``https://api.anthropic.com``.
        api_key: the key (never logged or shown).
        client: the shared session (`payrouter.http_client.new_session`) from the app's lifespan.
        timeout: connect / read (first byte) limits; total: seconds for a whole non-streaming call.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        client: aiohttp.ClientSession,
        timeout: float | aiohttp.ClientTimeout = 60.0,
        total: float | None = None,
    ) -> None:
        headers = {"anthropic-version": API_VERSION}
        if api_key:
            headers["x-api-key"] = api_key
        super().__init__(base_url.rstrip("/").removesuffix("/v1") + "/v1/messages", headers, client, timeout, total)

    async def chat(self, request: dict[str, Any], upstream_model: str, max_tokens: int) -> Completion:
        """One non-streaming call, answered in OpenAI's shape.

        Raises:
            UpstreamError: transport failure, non-2xx status, or a malformed answer.
        """
        status, content = await self._post(to_anthropic(request, upstream_model, max_tokens))
        try:
            completion = to_openai_completion(json.loads(content), upstream_model)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UpstreamError("upstream answered with a malformed message", status=status) from None
        usage = completion["usage"]
        return Completion(completion, usage["prompt_tokens"], usage["completion_tokens"])

    async def stream(self, request: dict[str, Any], upstream_model: str, max_tokens: int) -> UpstreamStream:
        """Open a stream; Anthropic events are translated to OpenAI chunks as they arrive.

        Raises:
            UpstreamError: as for `OpenAICompatible.stream`.
        """
        body = {**to_anthropic(request, upstream_model, max_tokens), "stream": True}
        return await self._open_stream(body, lambda lines: _openai_lines(lines, upstream_model))


async def _openai_lines(lines: AsyncIterator[str], model: str) -> AsyncIterator[str]:
    """Anthropic SSE lines in, OpenAI ``data:`` chunk lines out (ending with ``[DONE]``)."""
    message_id, usage, tool_index = "", {}, -1

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        body = {
            "id": message_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if delta is not None else [],
            **extra,
        }
        return "data: " + json.dumps(body)

    async for line in lines:
        if not line.startswith("data:"):
            continue
        try:
            event = json.loads(line[5:])
        except ValueError:
            raise UpstreamError("upstream sent a malformed stream event") from None
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            message_id = message.get("id", "")
            usage = dict(message.get("usage") or {})
            yield chunk({"role": "assistant", "content": ""})
        elif kind == "content_block_start" and (event.get("content_block") or {}).get("type") == "tool_use":
            block = event["content_block"]
            tool_index += 1
            call = {
                "index": tool_index,
                "id": block.get("id"),
                "type": "function",
                "function": {"name": block.get("name"), "arguments": ""},
            }
            yield chunk({"tool_calls": [call]})
        elif kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                yield chunk({"content": delta.get("text", "")})
            elif delta.get("type") == "input_json_delta":
                yield chunk(
                    {"tool_calls": [{"index": tool_index, "function": {"arguments": delta.get("partial_json", "")}}]}
                )
        elif kind == "message_delta":
            usage.update(event.get("usage") or {})
            stop = (event.get("delta") or {}).get("stop_reason")
            yield chunk({}, _STOP.get(stop or "", "stop"))
        elif kind == "message_stop":
            yield "data: " + json.dumps(
                {
                    "id": message_id,
                    "object": "chat.completion.chunk",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [],
                    "usage": _usage(usage),
                }
            )
            yield "data: [DONE]"
            return
        elif kind == "error":
            raise UpstreamError("upstream reported an error mid-stream")
