"""A/B the voucher-paid path of two revisions, call by call.

Usage: .venv/bin/python bench/ab_paid.py --base REV [--calls 2000]

Runs benches one after the other and the machine's speed drifts between them (by up to 2x on
the VM these notes come from; two runs in a row also showed a first-of-the-pair bias of ~15%):
a change worth a few percent is lost in that. This starts one payrouter server from this tree
and one from ``REV`` (a temporary git worktree), beside each other against the same Redis,
test upstream and anvil, opens a channel on each, and alternates voucher-paid calls between
them (the order flipping every call), with the upstream called directly after each pair. It
prints each server's paid p50 and added p50 (minus the direct call's p50). The worktree, the
servers, anvil and the Redis keys are removed at the end, or when stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _serve(port: int, settings_json: str) -> None:
    """``--serve``: one payrouter server from whatever tree ``PYTHONPATH`` names."""
    import uvicorn
    from pydantic import SecretStr

    from payrouter.app import create_app
    from payrouter.serving_limits import uvicorn_options
    from payrouter.settings import ProviderSettings, ServerSettings, Settings
    from pricing import parse_price_table

    a = json.loads(settings_json)
    table = parse_price_table(a["table"])
    settings = Settings(
        price_table=table,
        providers={p: ProviderSettings(base_url=f"{a['upstream']}/v1") for p in {m.provider for m in table.models}},
        redis_url=a["redis"],
        namespace=a["namespace"],
        facilitator="local",
        rpc_url=a["rpc"],
        gas_key=SecretStr(a["gas"]),
        channel_authorizer_key=SecretStr(a["authorizer"]),
        server=ServerSettings(unpaid_rate=0),
    )
    # served as `payrouter serve` serves (its HTTP protocol and limits)
    options = uvicorn_options(settings.server)
    uvicorn.run(create_app(settings), host="127.0.0.1", port=port, log_level="error", access_log=False, **options)


async def _alternate(
    urls: list[str], upstream: str, agents: dict[str, Any], chain_id: int, token_domain: Any, calls: int
) -> tuple[dict[str, list[float]], list[float]]:
    import httpx

    from bench.paid_path import BenchChannel, _body
    from payrouter.client import read_offer
    from payrouter.x402.wire import decode_header, encode_header

    warm = 10
    latencies: dict[str, list[float]] = {u: [] for u in urls}
    direct: list[float] = []
    channels = {u: BenchChannel(agents[u], chain_id, token_domain, calls + warm) for u in urls}
    async with httpx.AsyncClient(timeout=60) as http, httpx.AsyncClient(timeout=60) as up:
        for i in range(calls + warm):
            body = _body()
            for url in urls if i % 2 == 0 else urls[::-1]:
                offer = read_offer((await http.post(url, json=body)).headers).body
                header = encode_header(channels[url].payment(offer))
                start = time.perf_counter()
                response = await http.post(url, json=body, headers={"PAYMENT-SIGNATURE": header})
                elapsed = (time.perf_counter() - start) * 1000
                assert response.status_code == 200, response.text
                receipt = decode_header(response.headers["payment-response"])
                channels[url].charged = int(receipt["extra"]["channelState"]["chargedCumulativeAmount"])
                if i >= warm:
                    latencies[url].append(elapsed)
            start = time.perf_counter()
            reply = await up.post(f"{upstream}/v1/chat/completions", json=body)
            assert reply.status_code == 200
            if i >= warm:
                direct.append((time.perf_counter() - start) * 1000)
    return latencies, direct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", help="the revision to compare this tree with (e.g. HEAD~3, a tag)")
    parser.add_argument("--calls", type=int, default=2000, help="measured voucher calls per server")
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "SETTINGS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve(int(args.serve[0]), args.serve[1])
        return
    if not args.base:
        parser.error("--base REV is required")

    from bench.hygiene import exit_on_sigterm
    from bench.paid_path import BATCH, REDIS_URL, _free_port, _serve_upstream, _wait, delete_namespace
    from payrouter.devchain import DevChain
    from payrouter.sandbox.dev import EXAMPLE_TABLE
    from pricing import load_price_table
    from wallets import LocalSigner

    exit_on_sigterm()  # a stopped run still stops its servers, removes its worktree, deletes its keys
    scratch = Path(tempfile.mkdtemp(prefix="payrouter-ab-"))
    base_tree = scratch / "base"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base_tree), args.base],
        check=True,
        capture_output=True,
    )
    servers: list[subprocess.Popen[bytes]] = []
    namespaces: list[str] = []
    upstream_proc = None
    try:
        with DevChain.start() as chain:
            table = load_price_table(EXAMPLE_TABLE)
            token = chain.deploy_token(table.asset.name, "USDC", table.asset.version)
            chain.install_batch_settlement()
            operator, authorizer = LocalSigner.generate(), LocalSigner.generate()
            table = table.on_chain(chain.network, token.address, operator.address).model_copy(
                update={"schemes": [BATCH]}
            )
            port = _free_port()
            upstream = f"http://127.0.0.1:{port}"
            upstream_proc = multiprocessing.get_context("spawn").Process(
                target=_serve_upstream, args=(port,), daemon=True
            )
            upstream_proc.start()
            trees = {"this tree": ROOT, f"base {args.base}": base_tree}
            urls: dict[str, str] = {}
            agents: dict[str, Any] = {}
            for label, tree in trees.items():
                namespace = f"payrouter-bench-ab-{secrets.token_hex(4)}"
                namespaces.append(namespace)
                settings = {
                    "table": table.model_dump(mode="json"),
                    "upstream": upstream,
                    "redis": REDIS_URL,
                    "namespace": namespace,
                    "rpc": chain.rpc_url,
                    "gas": chain.new_account().unsafe_export_private_key(),
                    "authorizer": authorizer.unsafe_export_private_key(),
                }
                server_port = _free_port()
                servers.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            str(ROOT / "bench" / "ab_paid.py"),
                            "--serve",
                            str(server_port),
                            json.dumps(settings),
                        ],
                        env={**os.environ, "PYTHONPATH": str(tree)},
                        cwd=tree,
                    )
                )
                url = f"http://127.0.0.1:{server_port}/v1/chat/completions"
                urls[label] = url
                agent = LocalSigner.generate()
                token.mint(agent.address, 10**12)
                agents[url] = agent
            asyncio.run(_wait(upstream + "/v1/models"))
            for url in urls.values():
                asyncio.run(_wait(url))
            latencies, direct = asyncio.run(
                _alternate(list(urls.values()), upstream, agents, chain.chain_id, token.domain, args.calls)
            )
            direct_p50 = statistics.median(direct)
            print(f"upstream direct p50 {direct_p50:.3f} ms ({len(direct)} calls)")
            for label, url in urls.items():
                paid = statistics.median(latencies[url])
                print(f"{label:<24} paid p50 {paid:.3f} ms   added p50 {paid - direct_p50:.3f} ms")
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
        if upstream_proc is not None and upstream_proc.is_alive():
            upstream_proc.terminate()
            upstream_proc.join(5)
        for namespace in namespaces:
            delete_namespace(namespace)
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_tree)], check=False, capture_output=True
        )
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    if "--serve" not in sys.argv:  # a server imports payrouter from the tree PYTHONPATH names
        sys.path.insert(0, str(ROOT))
    main()
