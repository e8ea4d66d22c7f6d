"""A deterministic OpenAI-compatible model server for tests, benchmarks and the sandbox.

It answers ``POST /v1/chat/completions`` with a reply derived from the prompt (same request,
same reply) and usage numbers counted the way the pricing estimator counts, so charges are
realistic. ``POST /_control`` injects failures and delays; ``GET /_stats`` counts calls, so a
test can prove that a rejected payment never reached the model.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from pricing import estimate_chat_input_tokens, estimate_text_tokens

__all__ = ["TestUpstream"]

_WORDS = (
    "payment route model token budget quote settle chain agent answer result stable fast "
    "cheap careful precise signal price router request response latency quality receipt"
).split()


def _reply_text(model: str, messages: list[dict[str, Any]], max_tokens: int) -> str:
    last: dict[str, Any] = next((m for m in reversed(messages) if m.get("role") == "user"), {})
    content = last.get("content")
    prompt = content if isinstance(content, str) else str(content)
    seed = hashlib.sha256(f"{model}\x00{prompt}".encode()).digest()
    words = [f"[{model}]"] + [_WORDS[b % len(_WORDS)] for b in seed]
    text = " ".join(words)
    # Stop inside the budget the router bought, as a real provider does.
    while estimate_text_tokens(text) > max_tokens and " " in text:
        text = text.rsplit(" ", 1)[0]
    return text


class TestUpstream:
    """The test model server as a Starlette app (``.app``) with counters and failure knobs."""

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.fail_models: set[str] = set()
        self.fail_next = 0
        self.fail_status = 500
        self.delay = 0.0
        self.chunk_delay = 0.0
        self.break_after: int | None = None
        self.break_models: set[str] = set()  # empty: break_after breaks every model's streams
        self.retry_after: int | None = None
        self.context_limit: int | None = None
        self.long_context_models: set[str] = set()
        self.last_request: dict[str, Any] = {}
        self.malformed = False
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/messages", self._messages, methods=["POST"]),
                Route("/_last", self._last, methods=["GET"]),
                Route("/_control", self._control, methods=["POST"]),
                Route("/_stats", self._stats, methods=["GET"]),
            ]
        )

    async def _admit(self, body: dict[str, Any]) -> tuple[str, str | None]:
        """Count the call and apply the delay: ``(model, "fail" | "too_long" | None)`` as told."""
        model = str(body.get("model", ""))
        self.calls[model] += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_next > 0 or model in self.fail_models:
            self.fail_next = max(0, self.fail_next - 1)
            return model, "fail"
        too_long = self.context_limit is not None and len(json.dumps(body.get("messages"))) > self.context_limit
        return model, "too_long" if too_long and model not in self.long_context_models else None

    def _breaks(self, model: str, index: int) -> bool:
        """Whether the stream of ``model`` breaks before its ``index``-th word."""
        if self.break_after is None or index < self.break_after:
            return False
        return not self.break_models or model in self.break_models

    def _failure(self, error: dict[str, Any]) -> JSONResponse:
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else None
        return JSONResponse(error, self.fail_status, headers=headers)

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        model, problem = await self._admit(body)
        if problem == "fail":
            return self._failure({"error": {"message": "injected failure", "type": "server_error"}})
        if self.malformed:
            return Response(b'{"id": "chatcmpl-broken", "choices": [', media_type="application/json")
        if problem == "too_long":
            error = {"message": "This model's maximum context length is exceeded", "code": "context_length_exceeded"}
            return JSONResponse({"error": error}, 400)
        messages = body.get("messages") or []
        max_tokens = int(body.get("max_tokens") or 256)
        text = _reply_text(model, messages, max_tokens)
        prompt_tokens = estimate_chat_input_tokens(messages, body.get("tools"))
        completion_tokens = estimate_text_tokens(text)
        digest = hashlib.sha256(repr(body).encode()).hexdigest()[:24]
        if body.get("stream"):
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
            return StreamingResponse(
                self._chunks(
                    f"chatcmpl-{digest}",
                    model,
                    text,
                    usage,
                    bool((body.get("stream_options") or {}).get("include_usage")),
                ),
                media_type="text/event-stream",
            )
        return JSONResponse(
            {
                "id": f"chatcmpl-{digest}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "length" if completion_tokens >= max_tokens else "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
        )

    async def _chunks(
        self, cid: str, model: str, text: str, usage: dict[str, int], include_usage: bool
    ) -> AsyncIterator[bytes]:
        def event(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            chunk = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                **extra,
            }
            return b"data: " + json.dumps(chunk).encode() + b"\n\n"

        yield event({"role": "assistant", "content": ""})
        for i, word in enumerate(text.split(" ")):
            if self._breaks(model, i):
                raise ConnectionAbortedError("injected: stream broken half-way")
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
            yield event({"content": word if i == 0 else " " + word})
        yield event({}, "stop")
        if include_usage:
            total = {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]}
            chunk = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
            yield b"data: " + json.dumps({**chunk, "choices": [], "usage": total}).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    async def _messages(self, request: Request) -> Response:
        """An Anthropic Messages API stand-in (non-streaming and streaming)."""
        body = await request.json()
        self.last_request = {"headers": dict(request.headers), "body": body}
        model, problem = await self._admit(body)
        if problem == "fail":
            return self._failure(
                {"type": "error", "error": {"type": "overloaded_error", "message": "injected failure"}}
            )
        if problem == "too_long":
            error = {"type": "invalid_request_error", "message": "prompt is too long: 250000 tokens > 200000 maximum"}
            return JSONResponse({"type": "error", "error": error}, 400)
        if not isinstance(body.get("max_tokens"), int) or not body.get("messages"):
            return JSONResponse({"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}}, 400)
        roles = [m["role"] for m in body["messages"]]
        if any(a == b for a, b in zip(roles, roles[1:], strict=False)) or roles[0] != "user":
            alternate = {"type": "invalid_request_error", "message": "roles must alternate"}
            return JSONResponse({"type": "error", "error": alternate}, 400)
        last_text = " ".join(
            b.get("text", "")
            for b in body["messages"][-1]["content"]
            if isinstance(b, dict) and b.get("type") == "text"
        )
        text = _reply_text(model, [{"role": "user", "content": last_text}], int(body["max_tokens"]))
        input_tokens = estimate_text_tokens(json.dumps(body["messages"])) + estimate_text_tokens(
            str(body.get("system", ""))
        )
        tools = body.get("tools") or []
        msg_id = "msg_" + hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:20]
        if body.get("stream"):
            return StreamingResponse(
                self._anthropic_events(msg_id, model, text, input_tokens, tools), media_type="text/event-stream"
            )
        content: list[dict[str, Any]] = [{"type": "text", "text": text}]
        stop = "end_turn"
        if tools:
            content.append({"type": "tool_use", "id": "toolu_1", "name": tools[0]["name"], "input": {"city": "Paris"}})
            stop = "tool_use"
        usage = {
            "input_tokens": input_tokens,
            "output_tokens": estimate_text_tokens(text),
            "cache_read_input_tokens": 3,
        }
        return JSONResponse(
            {
                "id": msg_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": content,
                "stop_reason": stop,
                "usage": usage,
            }
        )

    async def _anthropic_events(
        self, msg_id: str, model: str, text: str, input_tokens: int, tools: list[dict[str, Any]]
    ) -> AsyncIterator[bytes]:
        def event(name: str, data: dict[str, Any]) -> bytes:
            return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode()

        usage = {"input_tokens": input_tokens, "output_tokens": 1, "cache_read_input_tokens": 3}
        message = {"id": msg_id, "type": "message", "role": "assistant", "model": model, "content": [], "usage": usage}
        yield event("message_start", {"message": message})
        yield event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
        for i, word in enumerate(text.split(" ")):
            if self._breaks(model, i):
                raise ConnectionAbortedError("injected: stream broken half-way")
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
            yield event(
                "content_block_delta",
                {"index": 0, "delta": {"type": "text_delta", "text": word if i == 0 else " " + word}},
            )
        yield event("content_block_stop", {"index": 0})
        stop = "end_turn"
        if tools:
            block = {"type": "tool_use", "id": "toolu_1", "name": tools[0]["name"], "input": {}}
            yield event("content_block_start", {"index": 1, "content_block": block})
            yield event(
                "content_block_delta", {"index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"city": '}}
            )
            yield event(
                "content_block_delta", {"index": 1, "delta": {"type": "input_json_delta", "partial_json": '"Paris"}'}}
            )
            yield event("content_block_stop", {"index": 1})
            stop = "tool_use"
        yield event(
            "message_delta", {"delta": {"stop_reason": stop}, "usage": {"output_tokens": estimate_text_tokens(text)}}
        )
        yield event("message_stop", {})

    async def _last(self, request: Request) -> JSONResponse:
        return JSONResponse(self.last_request)

    async def _control(self, request: Request) -> JSONResponse:
        body = await request.json()
        if "fail_models" in body:
            self.fail_models = set(body["fail_models"])
        self.fail_next = int(body.get("fail_next", self.fail_next))
        self.fail_status = int(body.get("fail_status", self.fail_status))
        self.delay = float(body.get("delay_ms", self.delay * 1000)) / 1000
        self.chunk_delay = float(body.get("chunk_delay_ms", self.chunk_delay * 1000)) / 1000
        if "break_after" in body:
            self.break_after = body["break_after"]
        if "break_models" in body:
            self.break_models = set(body["break_models"])
        if "malformed" in body:
            self.malformed = bool(body["malformed"])
        if "retry_after" in body:
            self.retry_after = body["retry_after"]
        if "context_limit" in body:
            self.context_limit = body["context_limit"]
            self.long_context_models = set(body.get("long_context_models", []))
        if body.get("reset_stats"):
            self.calls.clear()
        return JSONResponse({"ok": True})

    async def _stats(self, request: Request) -> JSONResponse:
        return JSONResponse({"calls": sum(self.calls.values()), "by_model": dict(self.calls)})
