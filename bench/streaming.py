"""Time to first token: through payrouter (paid, streaming) vs straight from the provider.

Usage: .venv/bin/python bench/streaming.py [--n 100] [--block-time SECONDS]

The test provider and payrouter (`create_app`, local facilitator, Redis store, example price
table on a fresh anvil) each run in their own process, as in production. For each of --n
prompts: the payment is signed before the clock starts, then the time to the first content
chunk is measured through payrouter (x402 verification, the journal record, routing, upstream
stream open, relay; the transfer starts with the first chunk and runs while the stream flows)
and, for the same prompt, directly from the provider. Reports p50/p99 of both and of the
difference, and the time to the receipt (the last event, after the transfer is mined).
``--block-time 2`` mines a block every 2 s, as on Base, instead of on arrival.
"""

from __future__ import annotations

import argparse
import multiprocessing
import secrets
import statistics
import time
from collections.abc import Iterator

import httpx

from bench.hygiene import exit_on_sigterm
from bench.paid_path import _free_port, _serve_payrouter, _serve_upstream, delete_namespace
from bench.timing import percentile
from payrouter.client import build_payment_header, read_offer
from payrouter.devchain import DevChain
from payrouter.sandbox.dev import EXAMPLE_TABLE
from pricing import load_price_table
from wallets import LocalSigner


def _first_content(lines: Iterator[str]) -> None:
    for line in lines:
        compact = line.replace(" ", "")
        if '"content":"' in compact and '"content":""' not in compact:
            return
    raise RuntimeError("no content chunk")


def _wait(url: str) -> None:
    for _ in range(600):
        try:
            httpx.get(url, timeout=0.5)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


def _measure(
    router_url: str, upstream_url: str, agent: LocalSigner, n: int
) -> tuple[list[float], list[float], list[float]]:
    router, direct, receipts = [], [], []
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
                last = ""
                for line in lines:  # drain: the receipt is the last event, once the transfer is mined
                    last = line or last
                assert '"success":true' in last.replace(" ", ""), last
                receipt = (time.perf_counter() - start) * 1000
            start = time.perf_counter()
            with http.stream("POST", f"{upstream_url}/v1/chat/completions", json=body) as response:
                lines = response.iter_lines()
                _first_content(lines)
                straight = (time.perf_counter() - start) * 1000
                for _ in lines:
                    pass
            if i >= 5:
                router.append(through)
                direct.append(straight)
                receipts.append(receipt)
    return router, direct, receipts


def main() -> None:
    exit_on_sigterm()  # a stopped run still stops its servers and deletes its keys
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--block-time", type=int, default=None, help="anvil block time (default: mine on arrival)")
    args = parser.parse_args()
    n = args.n
    spawn = multiprocessing.get_context("spawn")
    with DevChain.start(block_time=args.block_time) as chain:
        token = chain.deploy_token()
        table = load_price_table(EXAMPLE_TABLE).on_chain(chain.network, token.address, LocalSigner.generate().address)
        agent = LocalSigner.generate()
        token.mint(agent.address, 10**12)
        up_port, router_port = _free_port(), _free_port()
        upstream_url, router_url = f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{router_port}"
        gas = chain.new_account().unsafe_export_private_key()
        namespace = f"payrouter-bench-{secrets.token_hex(4)}"
        procs = [
            spawn.Process(target=_serve_upstream, args=(up_port,), daemon=True),
            spawn.Process(
                target=_serve_payrouter,
                args=(
                    router_port,
                    table.model_dump_json(),
                    chain.rpc_url,
                    gas,
                    LocalSigner.generate().unsafe_export_private_key(),  # channel authorizer
                    upstream_url,
                    namespace,
                    None,  # profile
                    None,  # timing
                ),
                daemon=True,
            ),
        ]
        for proc in procs:
            proc.start()
        try:
            _wait(f"{upstream_url}/_stats")
            _wait(f"{router_url}/healthz")
            router, direct, receipts = _measure(router_url, upstream_url, agent, n)
        finally:
            for proc in procs:
                proc.terminate()
                proc.join(5)
            delete_namespace(namespace)
    added = [a - b for a, b in zip(router, direct, strict=True)]
    mining = f"blocks every {args.block_time} s" if args.block_time else "mined on arrival"
    print(f"anvil {mining}; {n} paid streams, gpt-4o-mini, max_tokens 64")
    rows = (
        ("through payrouter", router),
        ("direct to provider", direct),
        ("added by payrouter", added),
        ("receipt (last event)", receipts),
    )
    for name, values in rows:
        print(
            f"{name:<20} TTFT p50 {statistics.median(values):6.2f} ms  p99 {percentile(values, 0.99):6.2f} ms  (n={len(values)})"
        )


if __name__ == "__main__":
    main()
