"""The provider call's client cost: payrouter's adapter (aiohttp) against the same call with httpx.

Usage: .venv/bin/python bench/upstream_client.py [--n 2000] [--rounds 2]

The deterministic bench upstream runs in its own process; each client makes ``--n`` sequential
non-streaming completions on one keep-alive connection (after a warm-up) and reports the p50
latency and this process's CPU per call (`time.process_time`): the CPU is what a paid request
spends in the client. ``httpx`` is what the adapter used before: ``AsyncClient.post(json=...)``
and ``.json()``. Both run on uvloop, as the service does.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from bench.hygiene import exit_on_sigterm
from bench.paid_path import _free_port, _serve_upstream, _wait
from payrouter.http_client import new_session
from payrouter.upstream.openai import OpenAICompatible

REQUEST: dict[str, Any] = {"messages": [{"role": "user", "content": "benchmark me"}]}
BODY = {**REQUEST, "model": "gpt-4o-mini", "max_tokens": 64, "stream": False}


async def _measure(call: Callable[[], Awaitable[object]], n: int) -> tuple[float, float]:
    """(p50 ms, CPU ms per call) over ``n`` calls after 50 warm-ups."""
    for _ in range(50):
        await call()
    latencies = []
    cpu = time.process_time()
    for _ in range(n):
        start = time.perf_counter()
        await call()
        latencies.append(time.perf_counter() - start)
    return statistics.median(latencies) * 1000, (time.process_time() - cpu) / n * 1000


async def _adapter(base: str, n: int) -> tuple[float, float]:
    session = new_session()
    try:
        adapter = OpenAICompatible(base + "/v1", None, session)
        return await _measure(lambda: adapter.chat(REQUEST, "gpt-4o-mini", 64), n)
    finally:
        await session.close()


async def _httpx(base: str, n: int) -> tuple[float, float]:
    async with httpx.AsyncClient(timeout=60) as client:

        async def call() -> object:
            reply = await client.post(base + "/v1/chat/completions", json=BODY)
            reply.raise_for_status()
            return reply.json()

        return await _measure(call, n)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    exit_on_sigterm()
    import uvloop

    port = _free_port()
    upstream = multiprocessing.get_context("spawn").Process(target=_serve_upstream, args=(port,), daemon=True)
    upstream.start()
    base = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(_wait(base + "/v1/models"))
        for _ in range(args.rounds):
            for label, run in (("payrouter adapter (aiohttp)", _adapter), ("httpx AsyncClient", _httpx)):
                p50, cpu = uvloop.run(run(base, args.n))
                print(f"{label:<28} p50 {p50:6.3f} ms   client CPU {cpu:6.3f} ms/call   (n={args.n})", flush=True)
    finally:
        upstream.terminate()
        upstream.join(5)


if __name__ == "__main__":
    main()
