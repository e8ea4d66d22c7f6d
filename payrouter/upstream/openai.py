"""An OpenAI-compatible chat-completions adapter over aiohttp (`payrouter.http_client`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
from pydantic_core import to_json

from payrouter.http_client import MAX_LINE_BYTES, client_timeout, env_proxy

__all__ = ["Completion", "OpenAICompatible", "UpstreamError", "UpstreamStream"]


_DRAIN_S = 0.05  # how long the end of a finished stream's body is waited for
_RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}


class UpstreamError(Exception):
    """The provider failed to answer.

    Attributes:
        status: the provider's HTTP status, or None for transport failures.
        retryable: True when another attempt (or another provider) may succeed.
    """

    def __init__(
        self, message: str, status: int | None = None, retryable: bool = True, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())


def _status_error(status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError:
    """The error for a non-2xx answer; context-length refusals are worth another model."""
    text = body[:2000].decode(errors="replace").lower()
    context = status == 400 and any(
        marker in text for marker in ("context_length", "context length", "prompt is too long")
    )
    return UpstreamError(
        f"upstream answered HTTP {status}" + (" (context length exceeded)" if context else ""),
        status=status,
        retryable=context or status in _RETRYABLE_STATUS,
        retry_after=_retry_after(headers),
    )


@dataclass(frozen=True, slots=True)
class Completion:
    """A finished completion: the provider's JSON body and its token usage."""

    body: dict[str, Any]
    input_tokens: int
    output_tokens: int


class UpstreamStream:
    """An open streaming completion: iterate `chunks` for the provider's JSON chunks.

    `first` holds the first chunk, already received: a stream that fails before it is an
    `UpstreamError` from `OpenAICompatible.stream`, never a half-open stream.
    """

    def __init__(self, response: aiohttp.ClientResponse, lines: AsyncIterator[str], first: dict[str, Any]) -> None:
        self._response = response
        self._lines = lines
        self.first = first
        self.usage: dict[str, Any] | None = first.get("usage")

    async def chunks(self) -> AsyncIterator[dict[str, Any]]:
        """The first chunk, then the rest; raises UpstreamError if the stream breaks."""
        yield self.first
        try:
            async for line in self._lines:
                chunk = _sse_chunk(line)
                if chunk is _DONE:
                    await self._drain()
                    return
                if chunk is not None:
                    if chunk.get("usage"):
                        self.usage = chunk["usage"]
                    yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError(f"upstream stream broke: {exc.__class__.__name__}") from None
        finally:
            # an unfinished body closes the connection instead of returning it to the pool
            self._response.release()

    async def _drain(self) -> None:
        # what follows [DONE] is normally just the body's end: reading it lets the connection go
        # back to the pool (a new TLS connection per stream would cost a provider round trip or
        # more of time to first token); a provider that keeps talking gets its connection closed
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
            async with asyncio.timeout(_DRAIN_S):
                await self._response.content.read()

    async def aclose(self) -> None:
        """Stop reading and release the connection."""
        self._response.close()


async def _text_lines(response: aiohttp.ClientResponse) -> AsyncIterator[str]:
    """The body's lines, decoded, without their line ends."""
    try:
        async for raw in response.content:
            yield raw.decode("utf-8", "replace").rstrip("\r\n")
    except ValueError:  # aiohttp: a line longer than the reader's limit
        raise UpstreamError(f"upstream sent a stream line over {MAX_LINE_BYTES} bytes") from None


_DONE: dict[str, Any] = {}


def _sse_chunk(line: str) -> dict[str, Any] | None:
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if data == "[DONE]":
        return _DONE
    try:
        chunk = json.loads(data)
    except ValueError:
        raise UpstreamError("upstream sent a malformed stream chunk") from None
    if not isinstance(chunk, dict):
        raise UpstreamError("upstream sent a malformed stream chunk")
    if "error" in chunk:
        raise UpstreamError("upstream reported an error mid-stream")
    return chunk


class _JsonApi:
    """What both provider adapters share: one endpoint, its headers, time-outs, error mapping."""

    def __init__(
        self,
        url: str,
        headers: dict[str, str],
        client: aiohttp.ClientSession,
        timeout: float | aiohttp.ClientTimeout,
        total: float | None,
    ) -> None:
        self._url = url
        self._headers = {**headers, "Content-Type": "application/json"}
        self._proxy = env_proxy(url)
        self._client = client
        self._timeout = timeout if isinstance(timeout, aiohttp.ClientTimeout) else client_timeout(timeout, timeout)
        # the read timeout bounds each wait for bytes; a whole non-streaming call is bounded too,
        # so a provider trickling bytes cannot hold a paid request past its total
        self._total = total

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self._url!r})"

    async def _post(self, body: dict[str, Any]) -> tuple[int, bytes]:
        """POST ``body``; the answer's status and bytes when it is a 2xx."""
        try:
            async with asyncio.timeout(self._total):
                async with self._client.post(
                    self._url,
                    data=to_json(body),
                    headers=self._headers,
                    timeout=self._timeout,
                    proxy=self._proxy,
                    allow_redirects=False,
                ) as reply:
                    content = await reply.read()
        except TimeoutError:  # aiohttp's own time-outs are TimeoutErrors too
            raise UpstreamError("upstream timed out") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"upstream unreachable: {exc.__class__.__name__}") from None
        if reply.status >= 300:  # a redirect is not followed: it is an answer we cannot use
            raise _status_error(reply.status, reply.headers, content)
        return reply.status, content

    async def _open_stream(
        self, body: dict[str, Any], lines: Callable[[AsyncIterator[str]], AsyncIterator[str]]
    ) -> UpstreamStream:
        """POST a streaming request, then wait for the first OpenAI ``data:`` chunk of ``lines``
        (applied to the body's text lines)."""
        try:
            response = await self._client.post(
                self._url,
                data=to_json(body),
                headers=self._headers,
                timeout=self._timeout,
                proxy=self._proxy,
                allow_redirects=False,
            )
        except TimeoutError:
            raise UpstreamError("upstream timed out") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"upstream unreachable: {exc.__class__.__name__}") from None
        if response.status >= 300:
            try:
                error_body = await response.read()
            except (aiohttp.ClientError, TimeoutError):
                error_body = b""
            finally:
                response.release()
            raise _status_error(response.status, response.headers, error_body)
        chunk_lines = lines(_text_lines(response))
        first: dict[str, Any] | None = None
        try:
            async for line in chunk_lines:
                chunk = _sse_chunk(line)
                if chunk is _DONE:
                    break
                if chunk is not None:
                    first = chunk
                    break
        except (aiohttp.ClientError, TimeoutError) as exc:
            response.close()
            raise UpstreamError(f"upstream stream broke before its first chunk: {exc.__class__.__name__}") from None
        except BaseException:  # UpstreamError, and a cancellation: the connection is not reused
            response.close()
            raise
        if first is None:
            response.close()
            raise UpstreamError("upstream stream ended without any chunk")
        return UpstreamStream(response, chunk_lines, first)


class OpenAICompatible(_JsonApi):
    """Calls ``POST {base_url}/chat/completions`` of any OpenAI-compatible provider.

    Args:
        base_url: e.g. ``https://api.openai.com/v1``.
        api_key: bearer token, or None for keyless local servers. Never logged or shown.
        client: the shared session (connection pool, `payrouter.http_client.new_session`) from the app's lifespan.
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
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        super().__init__(base_url.rstrip("/") + "/chat/completions", headers, client, timeout, total)

    async def chat(self, request: dict[str, Any], upstream_model: str, max_tokens: int) -> Completion:
        """Run one non-streaming completion of ``request`` on ``upstream_model``.

        The output budget is enforced with ``max_tokens`` whatever the caller asked for.

        Raises:
            UpstreamError: transport failure, non-2xx status, or a malformed answer.
        """
        body = {k: v for k, v in request.items() if k not in ("max_completion_tokens", "stream", "stream_options")}
        body.update(model=upstream_model, max_tokens=max_tokens, stream=False)
        status, content = await self._post(body)
        try:
            data = json.loads(content)
            usage = data.get("usage") or {}
            input_tokens = int(usage.get("prompt_tokens", 0))
            output_tokens = int(usage.get("completion_tokens", 0))
            if not isinstance(data.get("choices"), list):
                raise ValueError("no choices")
        except (ValueError, TypeError, AttributeError):
            raise UpstreamError("upstream answered with a malformed completion", status=status) from None
        return Completion(body=data, input_tokens=input_tokens, output_tokens=output_tokens)

    async def stream(self, request: dict[str, Any], upstream_model: str, max_tokens: int) -> UpstreamStream:
        """Open a streaming completion and wait for its first chunk.

        Raises:
            UpstreamError: connection failure, non-2xx status, or a stream that ends or breaks
                before its first chunk (safe to fail over: nothing was sent to the client).
        """
        body = {k: v for k, v in request.items() if k not in ("max_completion_tokens", "stream_options")}
        body.update(model=upstream_model, max_tokens=max_tokens, stream=True, stream_options={"include_usage": True})
        return await self._open_stream(body, lambda lines: lines)
