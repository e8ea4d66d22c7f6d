"""The HTTP client of the paid path's outgoing calls (model providers, the chain's JSON-RPC).

aiohttp rather than httpx: these calls are on every paid request, and aiohttp's client spends
~0.2 ms of CPU on one where httpx spends ~0.6-0.9 ms (`bench/upstream_client.py`).
"""

from __future__ import annotations

import ssl
import urllib.request
from urllib.parse import urlsplit

import aiohttp
import certifi

__all__ = ["MAX_LINE_BYTES", "client_timeout", "env_proxy", "new_session"]

# the longest line a streamed body may send (a tool call's arguments in one SSE event)
MAX_LINE_BYTES = 1 << 20


def new_session(
    max_connections: int = 256, trace_configs: list[aiohttp.TraceConfig] | None = None
) -> aiohttp.ClientSession:
    """A connection pool; create it in the running event loop and close it when done.

    Certificates come from certifi (as httpx's do); proxies are per request (`env_proxy`).
    Callers must pass ``allow_redirects=False``: a redirected POST would carry the prompt (and a
    provider key aiohttp does not know to strip) to another host.
    """
    connector = aiohttp.TCPConnector(
        limit=max_connections,
        ssl=ssl.create_default_context(cafile=certifi.where()),
        # under the usual 5 s server idle timeout (uvicorn's, httpx's own): the client closes an
        # idle connection first, so a reused one is not one the server is closing at that moment
        keepalive_timeout=4,
    )
    # readline's limit is twice read_bufsize
    return aiohttp.ClientSession(connector=connector, read_bufsize=MAX_LINE_BYTES // 2, trace_configs=trace_configs)


def env_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url`` (``HTTPS_PROXY`` / ``HTTP_PROXY``, else
    ``ALL_PROXY``; none for hosts ``NO_PROXY`` names). Read it once per client: aiohttp's ``trust_env`` reads it on every request,
    at ~0.45 ms each."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if proxy is None or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxy


def client_timeout(connect: float, first_byte: float) -> aiohttp.ClientTimeout:
    """Bounds on connecting (pool wait included) and on each wait for bytes (the first one, and
    every gap in a stream); a whole call's bound is the adapter's ``total``."""
    return aiohttp.ClientTimeout(total=None, connect=connect, sock_read=first_byte)
