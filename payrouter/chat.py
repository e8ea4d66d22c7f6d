"""The OpenAI chat-completions request as payrouter reads it, and its quote digest."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from payrouter.messages import MalformedMessages, anthropic_to_chat

__all__ = [
    "ChatMessage",
    "ChatRequest",
    "InvalidRequest",
    "parse_chat_request",
    "parse_messages_request",
    "request_digest",
    "validate_chat",
]


class InvalidRequest(ValueError):
    """The request body is not a valid chat completion request.

    Attributes:
        param: the offending field (OpenAI's ``param``), when known.
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ChatMessage(BaseModel):
    """One message; unknown fields pass through to the provider."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    """A chat completion request.

    ``model`` is a catalog id or ``auto`` (``auto:<strategy>`` is passed to the router).
    Provider parameters payrouter does not interpret (temperature, top_p, ...) are kept and
    forwarded.
    """

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=200)
    messages: list[ChatMessage] = Field(min_length=1, max_length=10_000)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stream: bool = False
    tools: list[dict[str, Any]] | None = None
    routing: dict[str, Any] | None = None

    @property
    def output_limit(self) -> int | None:
        """The caller's output cap (``max_completion_tokens`` wins over ``max_tokens``)."""
        return self.max_completion_tokens or self.max_tokens

    def provider_body(self) -> dict[str, Any]:
        """The request as JSON for an OpenAI-compatible provider (model and budget set later).

        Our own ``routing`` field is not forwarded.
        """
        return self.model_dump(exclude_none=True, exclude={"routing"})


def parse_chat_request(body: bytes) -> tuple[ChatRequest, dict[str, Any]]:
    """Parse and validate a request body; return the model and the raw JSON object.

    Raises:
        InvalidRequest: malformed JSON, or a schema violation (naming the field).
    """
    raw = _json_object(body)
    return validate_chat(raw), raw


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        raw = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequest("request body is not valid JSON") from None
    if not isinstance(raw, dict):
        raise InvalidRequest("request body must be a JSON object")
    return raw


def parse_messages_request(body: bytes) -> tuple[ChatRequest, dict[str, Any]]:
    """Parse an Anthropic Messages request; return it as a chat request and the raw JSON.

    Raises:
        InvalidRequest: malformed JSON, missing ``max_tokens``/``messages``, a content block,
            system block or tool of the wrong shape, or a schema violation (naming the field).
    """
    raw = _json_object(body)
    if not isinstance(raw.get("max_tokens"), int) or isinstance(raw.get("max_tokens"), bool):
        raise InvalidRequest("max_tokens: an integer is required", param="max_tokens")
    if not isinstance(raw.get("messages"), list) or not all(isinstance(m, dict) for m in raw["messages"]):
        raise InvalidRequest("messages: a list of messages is required", param="messages")
    try:
        chat = anthropic_to_chat(raw)
    except MalformedMessages as exc:
        raise InvalidRequest(str(exc), param=exc.param) from None
    return validate_chat(chat), raw


def validate_chat(raw: dict[str, Any]) -> ChatRequest:
    """Validate a chat request object.

    Raises:
        InvalidRequest: naming the first invalid field.
    """
    try:
        return ChatRequest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        param = ".".join(str(p) for p in first["loc"])
        raise InvalidRequest(f"{param}: {first['msg']}", param=param) from None


def request_digest(method: str, path: str, raw: dict[str, Any], routing_headers: dict[str, str] | None = None) -> str:
    """A digest of what is being bought: method, path, the canonical JSON body and any routing
    headers (they change the route, so they change what is quoted).

    Key order and whitespace do not matter, so a client that re-serialises the body on its
    paid retry still matches its quote.
    """
    canonical = json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    extra = json.dumps(routing_headers, sort_keys=True) if routing_headers else ""
    return hashlib.sha256(f"{method} {path}\n{canonical}\n{extra}".encode()).hexdigest()
