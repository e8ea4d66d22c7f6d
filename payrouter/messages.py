"""The Anthropic-shaped surface (``POST /v1/messages``) on top of the OpenAI-shaped core.

Requests are translated to the OpenAI chat shape for routing, pricing and the providers;
answers and stream chunks are translated back into Anthropic messages and events.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from payrouter.upstream.anthropic import tool_use_block

__all__ = ["AnthropicErrorShape", "MalformedMessages", "anthropic_to_chat", "chat_to_message", "chunks_to_events"]

_FINISH = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "end_turn"}


class MalformedMessages(ValueError):
    """An Anthropic Messages request whose shape cannot be translated.

    Attributes:
        param: the offending field as a dotted path (``messages.0.content.1``).
    """

    def __init__(self, param: str, problem: str) -> None:
        super().__init__(f"{param}: {problem}")
        self.param = param


def _blocks(value: Any, path: str) -> list[dict[str, Any]]:
    """The content blocks of a string-or-blocks field (a string is one text block).

    Raises:
        MalformedMessages: the value is neither, or a block is not an object.
    """
    if value is None:
        return []
    if isinstance(value, str):
        return [{"type": "text", "text": value}]
    if not isinstance(value, list):
        raise MalformedMessages(path, "a string or a list of content blocks is required")
    for i, block in enumerate(value):
        if not isinstance(block, dict):
            raise MalformedMessages(f"{path}.{i}", "a content block must be an object")
    return value


def _text(block: dict[str, Any], path: str) -> str:
    text = block.get("text", "")
    if not isinstance(text, str):
        raise MalformedMessages(f"{path}.text", "a string is required")
    return text


def _content_parts(content: Any, path: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(OpenAI content parts, tool calls, tool results) of an Anthropic content value at ``path``.

    Raises:
        MalformedMessages: naming the first block that is not of the Messages API's shape.
    """
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for i, block in enumerate(_blocks(content, path)):
        kind = block.get("type")
        where = f"{path}.{i}"
        if kind == "text":
            parts.append({"type": "text", "text": _text(block, where)})
        elif kind == "image":
            source = block.get("source") or {}
            if not isinstance(source, dict):
                raise MalformedMessages(f"{where}.source", "an object is required")
            url = source.get("url") or f"data:{source.get('media_type')};base64,{source.get('data', '')}"
            parts.append({"type": "image_url", "image_url": {"url": url}})
        elif kind == "tool_use":
            arguments = json.dumps(block.get("input", {}))
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": arguments},
                }
            )
        elif kind == "tool_result":
            inner = _blocks(block.get("content"), f"{where}.content")
            text = "".join(_text(p, f"{where}.content.{j}") for j, p in enumerate(inner) if p.get("type") == "text")
            results.append({"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text})
    return parts, calls, results


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise MalformedMessages("tools", "a list of tools is required")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise MalformedMessages(f"tools.{i}", "a tool must be an object")
        if not isinstance(tool.get("name"), str):
            raise MalformedMessages(f"tools.{i}.name", "a string is required")
        function = {
            "name": tool["name"],
            "description": tool.get("description", ""),
            "parameters": tool.get("input_schema", {}),
        }
        out.append({"type": "function", "function": function})
    return out


def anthropic_to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic Messages request as an OpenAI chat request (same model, budget, tools).

    ``body["messages"]`` must be a list of objects (`payrouter.chat.parse_messages_request`
    checks it); everything inside is checked here, as it is translated.

    Raises:
        MalformedMessages: a content value, content block, system block or tool of the wrong shape.
    """
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        text = "".join(_text(b, f"system.{i}") for i, b in enumerate(_blocks(system, "system")))
        messages.append({"role": "system", "content": text})
    for index, message in enumerate(body.get("messages") or []):
        parts, calls, results = _content_parts(message.get("content"), f"messages.{index}.content")
        messages += results
        if message.get("role") == "assistant":
            text = "".join(p.get("text", "") for p in parts if p["type"] == "text")
            out: dict[str, Any] = {"role": "assistant", "content": text or None}
            if calls:
                out["tool_calls"] = calls
            messages.append(out)
        elif parts:
            only_text = all(p["type"] == "text" for p in parts)
            content: Any = "".join(p["text"] for p in parts) if only_text else parts
            messages.append({"role": "user", "content": content})
    chat: dict[str, Any] = {"model": body.get("model"), "messages": messages, "max_tokens": body.get("max_tokens")}
    for key in ("temperature", "top_p", "stream", "metadata", "routing"):
        if key in body:
            chat[key] = body[key]
    if body.get("stop_sequences"):
        chat["stop"] = body["stop_sequences"]
    if body.get("tools"):
        chat["tools"] = _tools(body["tools"])
    return chat


def _usage(usage: dict[str, Any]) -> dict[str, int]:
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return {
        "input_tokens": int(usage.get("prompt_tokens", 0)) - cached,
        "output_tokens": int(usage.get("completion_tokens", 0)),
        "cache_read_input_tokens": cached,
    }


def chat_to_message(completion: dict[str, Any], model: str) -> dict[str, Any]:
    """An OpenAI chat completion as an Anthropic message."""
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    content += [tool_use_block(call) for call in message.get("tool_calls") or []]
    return {
        "id": completion.get("id", "").replace("chatcmpl", "msg", 1) or "msg",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _FINISH.get(choice.get("finish_reason") or "stop", "end_turn"),
        "stop_sequence": None,
        "usage": _usage(completion.get("usage") or {}),
        "payrouter": (completion.get("usage") or {}).get("payrouter"),
    }


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode()


async def chunks_to_events(chunks: AsyncIterator[dict[str, Any]], model: str) -> AsyncIterator[bytes]:
    """OpenAI stream chunks in, Anthropic stream events out (message_start ... message_stop)."""
    started = False
    block = -1  # index of the open content block
    kind = ""  # "text" or "tool"
    tools: dict[int, int] = {}  # OpenAI tool call index -> content block index
    stop = "end_turn"
    usage: dict[str, int] = {"input_tokens": 0, "output_tokens": 0}
    report: dict[str, Any] | None = None  # usage.payrouter of the final chunk
    async for chunk in chunks:
        if not started:
            started = True
            message: dict[str, Any] = {
                "id": str(chunk.get("id", "msg")).replace("chatcmpl", "msg", 1),
                "type": "message",
                "role": "assistant",
            }
            message |= {"model": model, "content": [], "stop_reason": None, "usage": usage}
            yield _event("message_start", {"message": message})
        if chunk.get("usage"):
            usage = _usage(chunk["usage"])
            report = chunk["usage"].get("payrouter")
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                if kind != "text":
                    if block >= 0:
                        yield _event("content_block_stop", {"index": block})
                    block, kind = block + 1, "text"
                    yield _event("content_block_start", {"index": block, "content_block": {"type": "text", "text": ""}})
                yield _event(
                    "content_block_delta", {"index": block, "delta": {"type": "text_delta", "text": delta["content"]}}
                )
            for call in delta.get("tool_calls") or []:
                position = int(call.get("index", 0))
                if position not in tools:
                    if block >= 0:
                        yield _event("content_block_stop", {"index": block})
                    block, kind = block + 1, "tool"
                    tools[position] = block
                    fn = call.get("function") or {}
                    start = {"type": "tool_use", "id": call.get("id"), "name": fn.get("name"), "input": {}}
                    yield _event("content_block_start", {"index": block, "content_block": start})
                arguments = (call.get("function") or {}).get("arguments")
                if arguments:
                    delta_json = {"type": "input_json_delta", "partial_json": arguments}
                    yield _event("content_block_delta", {"index": tools[position], "delta": delta_json})
            if choice.get("finish_reason"):
                stop = _FINISH.get(choice["finish_reason"], "end_turn")
    if block >= 0:
        yield _event("content_block_stop", {"index": block})
    closing: dict[str, Any] = {
        "delta": {"stop_reason": stop, "stop_sequence": None},
        "usage": {"output_tokens": usage["output_tokens"]},
    }
    if report is not None:
        closing["payrouter"] = report
    yield _event("message_delta", closing)
    yield _event("message_stop", {})


_ERROR_TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    408: "invalid_request_error",
    409: "invalid_request_error",
    413: "request_too_large",
}


class AnthropicErrorShape:
    """ASGI middleware: errors on ``/v1/messages`` in Anthropic's shape.

    ``{"type": "error", "error": {"type", "message"}}`` instead of OpenAI's ``{"error": {...}}``.
    402 answers keep the x402 body; streams pass through untouched.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/messages":
            await self.app(scope, receive, send)
            return
        start: Message | None = None

        async def reshape(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and message["status"] >= 400 and message["status"] != 402:
                start = message
                return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            try:
                error = json.loads(message.get("body", b""))["error"]
                kind = _ERROR_TYPES.get(start["status"], "api_error")
                body = json.dumps({"type": "error", "error": {"type": kind, "message": error["message"]}}).encode()
            except (ValueError, KeyError, TypeError):
                body = message.get("body", b"")
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, reshape)
