"""An OpenAI-compatible chat-completions adapter over httpx."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

__all__ = ["Completion", "OpenAICompatible", "UpstreamError"]

_RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}


class UpstreamError(Exception):
    """The provider failed to answer.

    Attributes:
        status: the provider's HTTP status, or None for transport failures.
        retryable: True when another attempt (or another provider) may succeed.
    """

    def __init__(self, message: str, status: int | None = None, retryable: bool = True) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class Completion:
    """A finished completion: the provider's JSON body and its token usage."""

    body: dict[str, Any]
    input_tokens: int
    output_tokens: int


class OpenAICompatible:
    """Calls ``POST {base_url}/chat/completions`` of any OpenAI-compatible provider.

    Args:
        base_url: e.g. ``https://api.openai.com/v1``.
        api_key: bearer token, or None for keyless local servers. Never logged or shown.
        client: shared httpx client (connection pool) from the app's lifespan.
    """

    def __init__(self, base_url: str, api_key: str | None, client: httpx.AsyncClient, timeout: float = 60.0) -> None:
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = client
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"OpenAICompatible(url={self._url!r})"

    async def chat(self, request: dict[str, Any], upstream_model: str, max_tokens: int) -> Completion:
        """Run one non-streaming completion of ``request`` on ``upstream_model``.

        The output budget is enforced with ``max_tokens`` whatever the caller asked for.

        Raises:
            UpstreamError: transport failure, non-2xx status, or a malformed answer.
        """
        body = {k: v for k, v in request.items() if k not in ("max_completion_tokens", "stream", "stream_options")}
        body.update(model=upstream_model, max_tokens=max_tokens, stream=False)
        try:
            reply = await self._client.post(self._url, json=body, headers=self._headers, timeout=self._timeout)
        except httpx.TimeoutException:
            raise UpstreamError("upstream timed out") from None
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream unreachable: {exc.__class__.__name__}") from None
        if reply.status_code >= 400:
            raise UpstreamError(
                f"upstream answered HTTP {reply.status_code}",
                status=reply.status_code,
                retryable=reply.status_code in _RETRYABLE_STATUS,
            )
        try:
            data = reply.json()
            usage = data.get("usage") or {}
            input_tokens = int(usage.get("prompt_tokens", 0))
            output_tokens = int(usage.get("completion_tokens", 0))
            if not isinstance(data.get("choices"), list):
                raise ValueError("no choices")
        except (ValueError, TypeError, AttributeError):
            raise UpstreamError("upstream answered with a malformed completion", status=reply.status_code) from None
        return Completion(body=data, input_tokens=input_tokens, output_tokens=output_tokens)
