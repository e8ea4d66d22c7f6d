"""Time to first token: through payrouter (paid, streaming) vs straight from the provider.

Usage: .venv/bin/python bench/streaming.py [--n 100]

Runs the sandbox (`payrouter dev --json`: anvil, test provider and router) in its own process.
For each of --n prompts: the payment is signed before the clock starts, then the time to the
first content chunk is measured through payrouter (x402 verification, routing, upstream
stream open, relay; settlement deferred to the end of the stream) and, for the same prompt,
directly from the provider. Reports p50/p99 of both and of the difference.
"""

from __future__ import annotations

import argparse
import json
import secrets
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from bench.timing import percentile
from payrouter.client import build_payment_header, read_offer
from wallets import LocalSigner


def _first_content(lines: Iterator[str]) -> None:
    for line in lines:
        compact = line.replace(" ", "")
        if '"content":"' in compact and '"content":""' not in compact:
            return
    raise RuntimeError("no content chunk")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100)
    n = parser.parse_args().n
    cli = Path(sys.executable).parent / "payrouter"
    sandbox = subprocess.Popen(
        [str(cli), "dev", "--json", "--port", "0", "--agents", "1", "--redis-url", "redis://127.0.0.1:6379/0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sandbox.stdout is not None
        info = json.loads(sandbox.stdout.readline())
        router_url, upstream_url = info["router_url"], info["upstream_url"]
        agent = LocalSigner(info["agent_private_keys"][0])
        router, direct = [], []
        with httpx.Client(timeout=30) as http:
            for i in range(n + 5):
                body = {
                    "model": "gpt-4o-mini",
                    "stream": True,
                    "max_tokens": 64,
                    "messages": [{"role": "user", "content": f"stream {secrets.token_hex(4)}"}],
                }
                offer = read_offer(http.post(f"{router_url}/v1/chat/completions", json=body).headers).body
                header, _ = build_payment_header(offer, agent, 10**6)
                start = time.perf_counter()
                with http.stream(
                    "POST", f"{router_url}/v1/chat/completions", json=body, headers={"PAYMENT-SIGNATURE": header}
                ) as response:
                    assert response.status_code == 200, response.read()
                    lines = response.iter_lines()
                    _first_content(lines)
                    through = (time.perf_counter() - start) * 1000
                    for _ in lines:  # drain: settlement happens after the stream
                        pass
                upstream_body = {**body, "model": "gpt-4o-mini"}
                start = time.perf_counter()
                with http.stream("POST", f"{upstream_url}/v1/chat/completions", json=upstream_body) as response:
                    lines = response.iter_lines()
                    _first_content(lines)
                    straight = (time.perf_counter() - start) * 1000
                    for _ in lines:
                        pass
                if i >= 5:
                    router.append(through)
                    direct.append(straight)
    finally:
        sandbox.send_signal(signal.SIGTERM)
        sandbox.wait(30)
    added = [a - b for a, b in zip(router, direct, strict=True)]
    for name, values in (("through payrouter", router), ("direct to provider", direct), ("added by payrouter", added)):
        print(
            f"{name:<20} TTFT p50 {statistics.median(values):6.2f} ms  p99 {percentile(values, 0.99):6.2f} ms  (n={len(values)})"
        )


if __name__ == "__main__":
    main()
