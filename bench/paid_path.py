"""Paid-path benchmark: payrouter's two x402 schemes, and payrouter vs the official middleware.

Usage: .venv/bin/python bench/paid_path.py [--scheme exact|batch-settlement|both] [--block-time 0]
       [--paid 200] [--paid-exact N] [--seconds 3] [--concurrency 16] [--no-official] [--profile FILE]

Every server runs in its own process, calls the same deterministic upstream (its own process)
and pays on the same anvil chain: automine by default, interval mining with ``--block-time N``
(the set-up transactions are mined at once; interval mining starts before the first server).

* payrouter: `create_app` with the local facilitator, the Redis store and the selected schemes.
* official (``exact`` only, skipped with ``--no-official``): a Starlette app whose route calls
  the same upstream, behind x402's `PaymentMiddlewareASGI` with `x402ResourceServer` over the
  in-process `x402Facilitator` (`FacilitatorWeb3Signer`), priced at payrouter's quote.

Reported per scheme:

* the unpaid 402 path, for reference: latency p50/p99 over ``--paid`` sequential calls and
  requests per second (closed loop, ``--concurrency`` connections; wrk when installed, by
  ``scripts/setup wrk``, else httpx), once with one body repeated and once with a new body on every request (payrouter
  reuses the route of a request it has seen). One payrouter server offers every selected scheme in one 402, so the figure is the
  same for both rows.
* paid calls: latency p50/p99 over sequential calls, each with a fresh body; the client gets
  the 402 and signs before the clock starts, so the figure is the server's verify + model call
  + charge. ``exact``: ``--paid-exact`` calls (default ``--paid``, or 20 when blocks take time:
  each call waits for its settlement to be mined). ``batch-settlement``: ``--paid`` vouchers on
  one channel; the deposit is the first warm-up call, outside the measured set.
* the upstream's own latency for the same bodies, called directly right after each paid call;
  added = paid p50 - upstream p50.
* gas per paid call: ``exact`` = mean gasUsed of the settlement transactions (the receipts of
  ``PAYMENT-RESPONSE.transaction``); ``batch-settlement`` = (deposit + claim + settle gasUsed) /
  the calls the channel paid (warm-ups included), where claim and settle are one pass of
  `payrouter.channels.claimer.Claimer` on the server's Redis namespace and chain, run after the
  measured calls.

``--profile FILE`` runs the payrouter server under cProfile and writes its stats to FILE on exit.
The run's Redis namespace is deleted at the end and every process it started is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import Any

import httpx
from eth_typing import HexStr

from bench.hygiene import exit_on_sigterm
from bench.timing import percentile
from payrouter.client import build_payment_header, read_offer
from payrouter.devchain import DevChain
from payrouter.sandbox.dev import EXAMPLE_TABLE
from payrouter.x402.wire import decode_header, encode_header
from pricing import load_price_table
from tests.integration.channel_payloads import batch_offer, config_for, voucher_payment
from wallets import Eip712Domain, LocalSigner
from wallets.channels import BATCH_SETTLEMENT_ADDRESS, ChannelConfig

REDIS_URL = "redis://127.0.0.1:6379/0"
EXACT = "exact"
BATCH = "batch-settlement"
BODY: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "benchmark me"}],
}


def _body() -> dict[str, Any]:
    """A fresh request (a new quote each time) of the same size as `BODY`."""
    return {**BODY, "messages": [{"role": "user", "content": f"benchmark {secrets.token_hex(4)}"}]}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _serve_upstream(port: int) -> None:
    import uvicorn

    from payrouter.sandbox.upstream import TestUpstream

    uvicorn.run(TestUpstream().app, host="127.0.0.1", port=port, log_level="error", access_log=False)


def _instrument() -> dict[str, list[float]]:
    """Wrap the steps of a paid call in the server process with wall-clock timers (``--timing``).

    Only this process's copies of the functions are wrapped; the server code is unchanged.
    Samples are milliseconds per call, by step; ``gate (paid)`` is the whole paid request as
    the payment gate sees it (body read to the last byte sent).
    """
    import functools
    import inspect

    from starlette.datastructures import Headers

    from payrouter.journal.redis import RedisJournal
    from payrouter.upstream.health import HealthTracker
    from payrouter.upstream.openai import OpenAICompatible
    from payrouter.x402 import gate
    from payrouter.x402.schemes import batch, batch_deposits, exact

    samples: dict[str, list[float]] = {}

    def timed_async(name: str, fn: Any) -> Any:
        @functools.wraps(fn)
        async def wrapper(*a: Any, **kw: Any) -> Any:
            start = time.perf_counter()
            try:
                return await fn(*a, **kw)
            finally:
                samples.setdefault(name, []).append((time.perf_counter() - start) * 1000)

        return wrapper

    def timed_sync(name: str, fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*a: Any, **kw: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                samples.setdefault(name, []).append((time.perf_counter() - start) * 1000)

        return wrapper

    gate_call = gate.PaymentGate.__call__

    async def gate_timed(self: Any, scope: Any, receive: Any, send: Any) -> None:
        paid = scope["type"] == "http" and "payment-signature" in Headers(scope=scope)
        start = time.perf_counter()
        try:
            await gate_call(self, scope, receive, send)
        finally:
            if paid:
                samples.setdefault("gate (paid)", []).append((time.perf_counter() - start) * 1000)

    gate.PaymentGate.__call__ = gate_timed  # type: ignore[method-assign]
    for module, prefix in ((batch, "batch"), (exact, "exact")):
        for attr in ("presented_quote", "run_handler", "send_response"):
            if hasattr(module, attr):
                setattr(module, attr, timed_async(f"{prefix}.{attr}", getattr(module, attr)))
    classes = ((batch.BatchScheme, "batch"), (batch_deposits.ChannelDeposits, "deposit"), (exact.ExactScheme, "exact"))
    for cls, prefix in classes:
        for attr, value in list(vars(cls).items()):
            if attr in ("offer", "refund_offer", "__init__") or not inspect.isfunction(value):
                continue
            wrap = timed_async if asyncio.iscoroutinefunction(value) else timed_sync
            setattr(cls, attr, wrap(f"{prefix}.{attr}", value))
    RedisJournal.open = timed_async("journal.open", RedisJournal.open)  # type: ignore[method-assign]
    RedisJournal.advance = timed_async("journal.advance", RedisJournal.advance)  # type: ignore[method-assign]
    RedisJournal.send_advance = timed_async(  # type: ignore[method-assign]
        "journal.send_advance (written, reply read later)", RedisJournal.send_advance
    )
    batch._Charging.confirm = timed_async(  # type: ignore[method-assign]
        "batch confirm (replies read after the answer)", batch._Charging.confirm
    )
    OpenAICompatible.chat = timed_async("upstream.chat (HTTP)", OpenAICompatible.chat)  # type: ignore[method-assign]
    HealthTracker.record_success = timed_async(  # type: ignore[method-assign]
        "health.record_success", HealthTracker.record_success
    )
    return samples


def _serve_payrouter(
    port: int,
    table_json: str,
    rpc_url: str,
    gas_key: str,
    authorizer_key: str,
    upstream: str,
    namespace: str,
    profile: str | None,
    timing: str | None,
    metrics: bool = True,
    request_log: str | None = None,
) -> None:
    import uvicorn
    from pydantic import SecretStr

    from payrouter.app import create_app
    from payrouter.serving_limits import uvicorn_options
    from payrouter.settings import ProviderSettings, ServerSettings, Settings
    from pricing import parse_price_table

    table = parse_price_table(json.loads(table_json))
    settings = Settings(
        price_table=table,
        providers={p: ProviderSettings(base_url=f"{upstream}/v1") for p in {m.provider for m in table.models}},
        redis_url=REDIS_URL,
        namespace=namespace,
        facilitator="local",
        rpc_url=rpc_url,
        gas_key=SecretStr(gas_key),
        channel_authorizer_key=SecretStr(authorizer_key),
        request_log=request_log,
        # one load generator on one address is all this bench's traffic: no per-client limit
        server=ServerSettings(unpaid_rate=0),
    )
    if not metrics:
        _without_metrics()
    samples = _instrument() if timing else None
    app = create_app(settings)
    served_as = uvicorn_options(settings.server)  # `payrouter serve`'s HTTP protocol and limits
    if profile is None and timing is None:
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", access_log=False, **served_as)
        return
    import cProfile
    import signal
    import sys

    # uvicorn re-raises the SIGTERM it caught once it has shut down: exit through `finally`
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    profiler = cProfile.Profile()
    served: Any = app
    if profile:

        async def paid_profiled(scope: Any, receive: Any, send: Any) -> None:
            # only paid requests (the measured ones; each bench call's unpaid 402 is not), from
            # the server's first look at them to their last byte; background work that runs
            # meanwhile is in the profile too, as it is in the measured latency
            paid = scope["type"] == "http" and any(k == b"payment-signature" for k, _ in scope["headers"])
            if paid:
                profiler.enable()
            try:
                await app(scope, receive, send)
            finally:
                if paid:
                    profiler.disable()

        served = paid_profiled
    try:
        uvicorn.run(served, host="127.0.0.1", port=port, log_level="error", access_log=False, **served_as)
    finally:
        if profile:
            profiler.dump_stats(profile)
        if timing:
            with open(timing, "w") as out:
                json.dump(samples, out)


def _without_metrics() -> None:
    """Take payrouter's instrumentation out of this (server) process: ``--metrics-cost``'s baseline.

    Metric updates become no-ops, the request-metrics middleware is left out of the app, what the
    paid path notes for the request log does nothing, and timed awaits are awaited bare.
    """
    import prometheus_client.metrics as pm

    import payrouter.app
    import payrouter.x402.settlement as settlement
    from payrouter.metrics import calls
    from payrouter.x402.schemes import batch, exact

    def noop(*_a: Any, **_kw: Any) -> None:
        return None

    for cls, names in ((pm.Counter, ("inc",)), (pm.Gauge, ("inc", "dec", "set")), (pm.Histogram, ("observe",))):
        for name in names:
            setattr(cls, name, noop)
    pm.MetricWrapperBase.labels = lambda self, *_a, **_kw: self  # type: ignore[method-assign]
    vars(payrouter.app)["RequestMetrics"] = lambda app, **_kw: app
    for name in ("quoted", "refused", "scheme_chosen", "holds", "committed", "deposit_sent", "answered", "model_time"):
        setattr(calls, name, noop)
    for module in (exact, batch, settlement):
        module.timed = lambda awaitable, _histogram: awaitable  # type: ignore[attr-defined]


def _serve_official(
    port: int, rpc_url: str, gas_key: str, upstream: str, network: str, asset: str, pay_to: str, amount: int
) -> None:
    import uvicorn
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response

    from tests.integration.official_server import official_app

    client = httpx.AsyncClient(timeout=30)

    async def chat(request: Request) -> Response:
        body = await request.json()
        reply = await client.post(f"{upstream}/v1/chat/completions", json={**body, "model": "gpt-4o-mini"})
        return JSONResponse(reply.json(), reply.status_code)

    app = official_app(rpc_url, gas_key, network, asset, pay_to, amount, ("POST", "/v1/chat/completions", chat))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", access_log=False)


async def _wait(url: str) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(600):
            try:
                await http.get(url, timeout=0.5)
                return
            except httpx.HTTPError:
                await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


# ---------------------------------------------------------------------- unpaid 402 path


# one body per request: "benchmark me <n> <random>", the same JSON shape as BODY
_DISTINCT_LUA = """
local n = 0
request = function()
  n = n + 1
  local body = '%s' .. n .. ' ' .. math.random(1, 1000000000) .. '%s'
  return wrk.format(nil, nil, nil, body)
end
"""


def _wrk_rps(url: str, seconds: float, concurrency: int, distinct: bool) -> float | None:
    """Unpaid-402 throughput measured by wrk (a C load generator), when installed; ``distinct``:
    every request a new body (nothing a server could reuse from the last one)."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n')
        if distinct:
            head, tail = json.dumps({**BODY, "messages": [{"role": "user", "content": "benchmark me \0"}]}).split(
                "\\u0000"
            )
            script.write(_DISTINCT_LUA % (head, tail))
        else:
            script.write(f"wrk.body = [[{json.dumps(BODY)}]]\n")
    out = subprocess.run(
        [wrk, "-t2", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "-s", script.name, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    os.unlink(script.name)
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    assert match and non2xx and total and non2xx.group(1) == total.group(1), out  # every answer was a 402
    return float(match.group(1))


async def _unpaid_rps(url: str, seconds: float, concurrency: int, distinct: bool = False) -> float:
    measured = await asyncio.to_thread(_wrk_rps, url, seconds, concurrency, distinct)
    if measured is not None:
        return measured
    count = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:

        async def loop() -> None:
            nonlocal count
            while time.perf_counter() < deadline:
                response = await http.post(url, json=_body() if distinct else BODY)
                assert response.status_code == 402, response.text
                count += 1

        start = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        return count / (time.perf_counter() - start)


async def _unpaid_latencies(url: str, n: int) -> list[float]:
    out = []
    async with httpx.AsyncClient(timeout=30) as http:
        for i in range(n + 5):
            body = _body()
            start = time.perf_counter()
            response = await http.post(url, json=body)
            elapsed = (time.perf_counter() - start) * 1000
            assert response.status_code == 402, response.text
            if i >= 5:
                out.append(elapsed)
    return out


async def _paid_exact_alternating(
    urls: dict[str, str], agent: LocalSigner, n: int, warm: int
) -> dict[str, list[float]]:
    """Paid ``exact`` latencies (ms) of each server in ``urls``, the servers taking turns call by
    call (and which goes first alternating), so drift in the machine's load hits both alike."""
    out: dict[str, list[float]] = {name: [] for name in urls}
    async with httpx.AsyncClient(timeout=60) as http:
        for i in range(n + warm):
            order = list(urls.items())
            for name, url in order if i % 2 == 0 else reversed(order):
                body = _body()
                offer = read_offer((await http.post(url, json=body)).headers).body
                header, _ = build_payment_header(offer, agent, max_amount=10**6)
                start = time.perf_counter()
                response = await http.post(url, json=body, headers={"PAYMENT-SIGNATURE": header})
                elapsed = (time.perf_counter() - start) * 1000
                assert response.status_code == 200, response.text
                if i >= warm:
                    out[name].append(elapsed)
    return out


def _cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds a process used so far (Linux ``/proc``; 0 elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _metrics_cost(
    latencies: dict[str, list[float]], unpaid: dict[str, list[float]], cpu_ms: dict[str, float], log_lines: int
) -> str:
    on, off = latencies["metrics"], latencies["no-metrics"]
    lines = ["metrics and request log cost (exact, the two servers alternating call by call):"]
    for name, values in latencies.items():
        lines.append(
            f"  {name:<11} paid p50 {statistics.median(values):7.2f} ms  p99 {percentile(values, 0.99):7.2f} ms  "
            f"unpaid 402 p50 {statistics.median(unpaid[name]):6.2f} ms  server CPU {cpu_ms[name]:5.2f} ms per "
            f"paid call (its 402 included)  (n={len(values)})"
        )
    ratio = statistics.median(on) / statistics.median(off)
    lines.append(
        f"  paid p50 with / without: x{ratio:.3f} ({(ratio - 1) * 100:+.1f}%); request log lines written: {log_lines}"
    )
    return "\n".join(lines)


@dataclass
class Unpaid:
    rps: float  # one body, repeated (as a client retrying or a flood of one request sends)
    p50_ms: float
    p99_ms: float
    distinct_rps: float  # a new body every request


async def _measure_unpaid(url: str, args: argparse.Namespace) -> Unpaid:
    await _wait(url)
    lat = await _unpaid_latencies(url, args.paid)
    rps = await _unpaid_rps(url, args.seconds, args.concurrency)
    distinct = await _unpaid_rps(url, args.seconds, args.concurrency, distinct=True)
    return Unpaid(rps, statistics.median(lat), percentile(lat, 0.99), distinct)


# ---------------------------------------------------------------------- paid calls


@dataclass
class Paid:
    """The measured paid calls of one scheme (and, per call, the upstream called directly)."""

    latencies: list[float] = field(default_factory=list)
    upstream: list[float] = field(default_factory=list)
    txs: list[str] = field(default_factory=list)  # exact: settlement txs; batch: the deposit
    paid_total: int = 0  # atomic units the server took (exact) or charged (batch), warm-ups included
    calls: int = 0  # paid calls, warm-ups included
    deposit: int = 0


async def _direct(http: httpx.AsyncClient, upstream: str, body: dict[str, Any]) -> float:
    start = time.perf_counter()
    response = await http.post(f"{upstream}/v1/chat/completions", json=body)
    elapsed = (time.perf_counter() - start) * 1000
    assert response.status_code == 200, response.text
    return elapsed


async def _paid_exact(url: str, upstream: str | None, agent: LocalSigner, n: int, warm: int) -> Paid:
    out = Paid()
    async with httpx.AsyncClient(timeout=60) as http, httpx.AsyncClient(timeout=60) as up:
        for i in range(n + warm):
            body = _body()
            offer = read_offer((await http.post(url, json=body)).headers).body
            header, requirement = build_payment_header(offer, agent, max_amount=10**6)
            start = time.perf_counter()
            response = await http.post(url, json=body, headers={"PAYMENT-SIGNATURE": header})
            elapsed = (time.perf_counter() - start) * 1000
            assert response.status_code == 200, response.text
            receipt = decode_header(response.headers["payment-response"])
            assert receipt["success"] is True and receipt["transaction"], receipt
            out.txs.append(str(receipt["transaction"]))
            out.paid_total += int(requirement["amount"])
            out.calls += 1
            direct = await _direct(up, upstream, body) if upstream else 0.0
            if i >= warm:
                out.latencies.append(elapsed)
                out.upstream.append(direct)
    return out


@dataclass
class BenchChannel:
    """One agent's channel as a bench pays on it: opened by its first payment (a deposit sized
    for ``calls`` calls), then a voucher for ``charged + amount`` per call."""

    agent: LocalSigner
    chain_id: int
    token_domain: Eip712Domain
    calls: int
    config: ChannelConfig | None = None
    charged: int = 0  # as the last receipt said
    deposit: int = 0

    def payment(self, offer: dict[str, Any]) -> dict[str, Any]:
        """The next payment for ``offer`` (the deposit, the first time)."""
        requirement = batch_offer(offer)
        amount = int(requirement["amount"])
        if self.config is not None:
            return voucher_payment(offer, self.config, self.charged + amount, self.agent, chain_id=self.chain_id)
        self.config = config_for(requirement, self.agent, salt=secrets.randbits(64))
        self.deposit = max(int(requirement["extra"]["minDeposit"]), 2 * amount * self.calls)
        return voucher_payment(
            offer,
            self.config,
            self.charged + amount,
            self.agent,
            chain_id=self.chain_id,
            deposit=self.deposit,
            token=self.agent,
            token_domain=self.token_domain,
        )


async def _paid_batch(
    url: str, upstream: str, agent: LocalSigner, n: int, warm: int, chain_id: int, token_domain: Eip712Domain
) -> Paid:
    """``warm`` unmeasured calls (the first one deposits), then ``n`` measured vouchers."""
    out = Paid()
    channel = BenchChannel(agent, chain_id, token_domain, n + warm)
    async with httpx.AsyncClient(timeout=60) as http, httpx.AsyncClient(timeout=60) as up:
        for i in range(n + warm):
            body = _body()
            offer = read_offer((await http.post(url, json=body)).headers).body
            header = encode_header(channel.payment(offer))
            start = time.perf_counter()
            response = await http.post(url, json=body, headers={"PAYMENT-SIGNATURE": header})
            elapsed = (time.perf_counter() - start) * 1000
            assert response.status_code == 200, response.text
            receipt = decode_header(response.headers["payment-response"])
            assert receipt["success"] is True, receipt
            if receipt.get("transaction"):
                out.txs.append(str(receipt["transaction"]))  # the deposit (when the receipt names it)
            extra = receipt["extra"]
            cumulative = int(extra["channelState"]["chargedCumulativeAmount"])
            assert cumulative == channel.charged + int(extra["chargedAmount"]), extra
            channel.charged = cumulative
            out.calls += 1
            direct = await _direct(up, upstream, body)
            if i >= warm:
                out.latencies.append(elapsed)
                out.upstream.append(direct)
    out.paid_total, out.deposit = channel.charged, channel.deposit
    return out


def _gas_used(chain: DevChain, tx: str) -> int:
    return int(chain.w3.eth.get_transaction_receipt(HexStr(tx))["gasUsed"])


def _sent_to(chain: DevChain, sender: str, to: str, first_block: int) -> list[str]:
    """The transactions ``sender`` sent to ``to`` in blocks from ``first_block`` on."""
    found = []
    for number in range(first_block, int(chain.w3.eth.block_number) + 1):
        for tx in chain.w3.eth.get_block(number, full_transactions=True)["transactions"]:
            assert not isinstance(tx, bytes)
            if str(tx["from"]).lower() == sender.lower() and str(tx.get("to") or "").lower() == to.lower():
                found.append("0x" + bytes(tx["hash"]).hex().removeprefix("0x"))
    return found


async def _claim_and_settle(
    rpc_url: str,
    gas_key: str,
    authorizer_key: str,
    namespace: str,
    pay_to: str,
    token: str,
    network: str,
    chain_id: int,
) -> tuple[list[str], str, int, int]:
    """One claimer pass on the server's namespace: (claim txs, settle tx, claimed, settled)."""
    from payrouter.chain import ChainClient
    from payrouter.channels import open_channel_store
    from payrouter.channels.claimer import Claimer
    from payrouter.channels.contract import BatchSettlementContract
    from payrouter.channels.settler import GasWalletSettler
    from payrouter.facilitator.sender import GasSender
    from payrouter.journal.open import open_journal
    from payrouter.store import RedisStore

    chain = ChainClient(rpc_url)
    locks = RedisStore(REDIS_URL, namespace)  # the server's gas-nonce keys: one wallet, one nonce sequence
    store = open_channel_store(REDIS_URL, namespace)
    journal = open_journal(REDIS_URL, namespace)
    try:
        contract = BatchSettlementContract(chain, GasSender(chain, LocalSigner(gas_key), locks, chain_id), chain_id)
        claimer = Claimer(
            store,
            GasWalletSettler(contract, LocalSigner(authorizer_key)),
            journal,
            locks,
            pay_to,
            token,
            0.0,
            0,
            chain=chain,
            network=network,
        )
        report = await claimer.run_once(wait=10)
        assert not report.skipped and not report.errors and not report.in_doubt, report
        return report.claim_txs, report.settle_tx, report.claimed, report.settled
    finally:
        for closer in (store, journal, locks):
            await closer.close()
        await chain.close()


# ---------------------------------------------------------------------- report


@dataclass
class Row:
    scheme: str
    unpaid: Unpaid
    paid: Paid
    gas_per_call: float
    gas_note: str

    @property
    def p50(self) -> float:
        return statistics.median(self.paid.latencies)

    @property
    def p99(self) -> float:
        return percentile(self.paid.latencies, 0.99)

    @property
    def upstream_p50(self) -> float:
        return statistics.median(self.paid.upstream)

    @property
    def added_p50(self) -> float:
        return self.p50 - self.upstream_p50

    def line(self) -> str:
        lat = self.paid.latencies
        return (
            f"{self.scheme:<16} unpaid 402: p50 {self.unpaid.p50_ms:6.2f} ms  p99 {self.unpaid.p99_ms:6.2f} ms  "
            f"{self.unpaid.rps:6.0f} req/s (distinct bodies {self.unpaid.distinct_rps:6.0f})   paid: p50 {self.p50:8.2f} ms  p99 {self.p99:8.2f} ms  "
            f"mean {statistics.fmean(lat):8.2f} ms (n={len(lat)})   upstream direct: p50 {self.upstream_p50:5.2f} ms"
            f"  p99 {percentile(self.paid.upstream, 0.99):5.2f} ms   added p50 {self.added_p50:+6.2f} ms   "
            f"gas/call {self.gas_per_call:,.0f} ({self.gas_note})"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "unpaid_402_rps": self.unpaid.rps,
            "unpaid_402_rps_distinct": self.unpaid.distinct_rps,
            "unpaid_402_p50_ms": self.unpaid.p50_ms,
            "unpaid_402_p99_ms": self.unpaid.p99_ms,
            "paid_p50_ms": self.p50,
            "paid_p99_ms": self.p99,
            "paid_mean_ms": statistics.fmean(self.paid.latencies),
            "paid_n": len(self.paid.latencies),
            "upstream_p50_ms": self.upstream_p50,
            "added_p50_ms": self.added_p50,
            "gas_per_call": self.gas_per_call,
        }


def _table(rows: list[Row], block_time: int) -> str:
    lines = [
        f"block time: {'instant (automine)' if block_time == 0 else f'{block_time} s'}",
        "",
        "| scheme | paid p50 | paid p99 | added p50 | gas per call | paid calls measured |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.scheme} | {row.p50:.2f} ms | {row.p99:.2f} ms | {row.added_p50:.2f} ms | "
            f"{row.gas_per_call:,.0f} | {len(row.paid.latencies)} |"
        )
    by = {r.scheme: r for r in rows}
    if EXACT in by and BATCH in by:
        exact, batch = by[EXACT], by[BATCH]
        lines += [
            "",
            f"batch vs exact at this block time: {exact.p50 / batch.p50:.1f}x faster p50",
            f"gas per call: {100 * batch.gas_per_call / exact.gas_per_call:.2f}% of exact",
        ]
    return "\n".join(lines)


def _breakdown(samples: dict[str, list[float]]) -> str:
    """The server-side steps of paid calls (``--timing``): median and p99 ms per call."""
    lines = ["", "server-side steps of paid calls (wall clock, ms per call; nested steps included in their parent):"]
    lines += ["| step | calls | p50 | p99 |", "|---|---:|---:|---:|"]
    for name, values in sorted(samples.items(), key=lambda kv: -statistics.median(kv[1])):
        lines.append(f"| {name} | {len(values)} | {statistics.median(values):.3f} | {percentile(values, 0.99):.3f} |")
    return "\n".join(lines)


def delete_namespace(namespace: str) -> None:
    """Remove every Redis key a bench run left under ``namespace`` (store, channels, journal)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"*{namespace}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def _stop(procs: list[BaseProcess]) -> None:
    for proc in procs:
        if proc.pid is not None and proc.is_alive():
            proc.terminate()
    for proc in procs:
        if proc.pid is None:
            continue
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join(5)


def main() -> None:
    exit_on_sigterm()  # a stopped run still stops its servers and deletes its keys
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scheme", choices=(EXACT, BATCH, "both"), default="both")
    parser.add_argument("--block-time", type=int, default=0, help="anvil interval mining, seconds (0: automine)")
    parser.add_argument("--paid", type=int, default=200, help="measured paid calls (batch-settlement vouchers)")
    parser.add_argument(
        "--paid-exact", type=int, default=None, help="measured exact calls (default: --paid, or 20 with --block-time)"
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="unpaid-402 throughput run length")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--no-official", action="store_true", help="skip the official x402 middleware")
    parser.add_argument("--profile", default=None, help="cProfile the payrouter server's paid requests into this file")
    parser.add_argument(
        "--timing", action="store_true", help="time the steps of paid calls in the server (best with one --scheme)"
    )
    parser.add_argument(
        "--metrics-cost",
        action="store_true",
        help="also run a payrouter server without metrics or request log, and compare paid exact calls "
        "alternating between the two (the measured server writes a request log)",
    )
    args = parser.parse_args()
    schemes = [EXACT, BATCH] if args.scheme == "both" else [args.scheme]
    block_time: int = args.block_time
    paid_exact: int = args.paid_exact if args.paid_exact is not None else (args.paid if block_time == 0 else 20)
    warm = 5 if block_time == 0 else 1  # exact warm-ups cost a block each
    official = EXACT in schemes and not args.no_official
    started = time.perf_counter()

    spawn = multiprocessing.get_context("spawn")
    with DevChain.start(block_time=block_time or None) as chain:
        if block_time:
            chain.rpc("evm_setAutomine", [True])  # the set-up is mined at once
        base = load_price_table(EXAMPLE_TABLE)
        token = chain.deploy_token(base.asset.name, "USDC", base.asset.version)
        if BATCH in schemes:
            chain.install_batch_settlement()
        operator = LocalSigner.generate()
        authorizer = LocalSigner.generate()
        table = base.on_chain(chain.network, token.address, operator.address)
        table = table.model_copy(update={"schemes": schemes})
        agents = {name: LocalSigner.generate() for name in (EXACT, BATCH, "official")}
        for agent in agents.values():
            token.mint(agent.address, 10**12)
        gas_wallet = chain.new_account()
        gas_key, gas_address = gas_wallet.unsafe_export_private_key(), gas_wallet.address
        official_gas = chain.new_account().unsafe_export_private_key()
        bare_gas = chain.new_account().unsafe_export_private_key() if args.metrics_cost else ""
        if block_time:
            chain.rpc("evm_setAutomine", [False])
            chain.rpc("evm_setIntervalMining", [block_time])
        ports = {name: _free_port() for name in ("upstream", "payrouter", "official", "bare")}
        upstream = f"http://127.0.0.1:{ports['upstream']}"
        from pricing import estimate_chat_input_tokens, quote_route

        amount = quote_route(table, "gpt-4o-mini", estimate_chat_input_tokens(BODY["messages"]), 64).amount
        namespace = f"payrouter-bench-{secrets.token_hex(4)}"
        timing_file = os.path.join(tempfile.gettempdir(), f"{namespace}-timing.json") if args.timing else None
        request_log = os.path.join(tempfile.gettempdir(), f"{namespace}-requests.jsonl") if args.metrics_cost else None
        procs: list[BaseProcess] = [
            spawn.Process(target=_serve_upstream, args=(ports["upstream"],), daemon=True),
            spawn.Process(
                target=_serve_payrouter,
                args=(
                    ports["payrouter"],
                    table.model_dump_json(),
                    chain.rpc_url,
                    gas_key,
                    authorizer.unsafe_export_private_key(),
                    upstream,
                    namespace,
                    args.profile,
                    timing_file,
                    True,
                    request_log,
                ),
                daemon=True,
            ),
        ]
        if args.metrics_cost:
            bare = spawn.Process(
                target=_serve_payrouter,
                args=(
                    ports["bare"],
                    table.model_dump_json(),
                    chain.rpc_url,
                    bare_gas,
                    authorizer.unsafe_export_private_key(),
                    upstream,
                    namespace + "-bare",
                    None,
                    None,
                    False,
                    None,
                ),
                daemon=True,
            )
            procs.append(bare)
        if official:
            procs.append(
                spawn.Process(
                    target=_serve_official,
                    args=(
                        ports["official"],
                        chain.rpc_url,
                        official_gas,
                        upstream,
                        chain.network,
                        token.address,
                        operator.address,
                        amount,
                    ),
                    daemon=True,
                )
            )
        try:
            for proc in procs:
                proc.start()
            ours = f"http://127.0.0.1:{ports['payrouter']}/v1/chat/completions"
            asyncio.run(_wait(f"{upstream}/v1/models"))
            unpaid = asyncio.run(_measure_unpaid(ours, args))
            rows: list[Row] = []
            for scheme in schemes:
                before = token.balance_of(operator.address)
                if scheme == EXACT:
                    paid = asyncio.run(_paid_exact(ours, upstream, agents[EXACT], paid_exact, warm))
                    assert token.balance_of(operator.address) - before == paid.paid_total, (
                        "exact: one settlement a call"
                    )
                    gas = [_gas_used(chain, tx) for tx in paid.txs]
                    rows.append(Row(EXACT, unpaid, paid, statistics.fmean(gas), f"mean of {len(gas)} settlements"))
                else:
                    first_block = int(chain.w3.eth.block_number)
                    paid = asyncio.run(
                        _paid_batch(ours, upstream, agents[BATCH], args.paid, 5, chain.chain_id, token.domain)
                    )
                    claims, settle, claimed, settled = asyncio.run(
                        _claim_and_settle(
                            chain.rpc_url,
                            gas_key,
                            authorizer.unsafe_export_private_key(),
                            namespace,
                            operator.address,
                            token.address,
                            chain.network,
                            chain.chain_id,
                        )
                    )
                    assert claimed == settled == paid.paid_total, (claimed, settled, paid.paid_total)
                    assert token.balance_of(operator.address) - before == paid.paid_total
                    # PAYMENT-RESPONSE of a deposit leaves `transaction` empty: find it on chain
                    deposits = paid.txs or _sent_to(chain, gas_address, BATCH_SETTLEMENT_ADDRESS, first_block)
                    deposits = [tx for tx in deposits if tx not in claims and tx != settle]
                    assert len(deposits) == 1, f"one deposit expected, got {deposits}"
                    txs = {"deposit": deposits, "claim": claims, "settle": [settle]}
                    gas_by = {kind: sum(_gas_used(chain, tx) for tx in hashes) for kind, hashes in txs.items()}
                    note = ", ".join(f"{k} {v:,}" for k, v in gas_by.items()) + f" / {paid.calls} calls"
                    rows.append(Row(BATCH, unpaid, paid, sum(gas_by.values()) / paid.calls, note))
                print(rows[-1].line(), flush=True)
            theirs: Row | None = None
            if official:
                url = f"http://127.0.0.1:{ports['official']}/v1/chat/completions"
                their_unpaid = asyncio.run(_measure_unpaid(url, args))
                before = token.balance_of(operator.address)
                paid = asyncio.run(_paid_exact(url, None, agents["official"], paid_exact, warm))
                assert token.balance_of(operator.address) - before == amount * paid.calls
                gas = [_gas_used(chain, tx) for tx in paid.txs]
                theirs = Row("official exact", their_unpaid, paid, statistics.fmean(gas), "mean")
                print(
                    f"{'official exact':<16} unpaid 402: p50 {their_unpaid.p50_ms:6.2f} ms  p99 "
                    f"{their_unpaid.p99_ms:6.2f} ms  {their_unpaid.rps:6.0f} req/s (distinct bodies "
                    f"{their_unpaid.distinct_rps:6.0f})   paid: p50 {theirs.p50:8.2f} ms"
                    f"  p99 {theirs.p99:8.2f} ms  (n={len(paid.latencies)})   gas/call {theirs.gas_per_call:,.0f}",
                    flush=True,
                )
                exact_row = next(r for r in rows if r.scheme == EXACT)
                print(
                    f"payrouter exact vs official: unpaid rps x{unpaid.rps / their_unpaid.rps:.2f} "
                    f"(distinct bodies x{unpaid.distinct_rps / their_unpaid.distinct_rps:.2f})   "
                    f"paid p50 x{theirs.p50 / exact_row.p50:.2f} faster   "
                    f"paid p99 x{theirs.p99 / exact_row.p99:.2f} faster"
                )
            if args.metrics_cost:
                urls = {"metrics": ours, "no-metrics": f"http://127.0.0.1:{ports['bare']}/v1/chat/completions"}
                asyncio.run(_wait(urls["no-metrics"]))
                unpaid_by = {name: asyncio.run(_unpaid_latencies(url, args.paid)) for name, url in urls.items()}
                pids = {"metrics": procs[1].pid, "no-metrics": bare.pid}
                cpu_before = {name: _cpu_seconds(pid) for name, pid in pids.items()}
                by = asyncio.run(_paid_exact_alternating(urls, agents[EXACT], paid_exact, warm))
                cpu_ms = {
                    name: (_cpu_seconds(pid) - cpu_before[name]) * 1000 / (paid_exact + warm)
                    for name, pid in pids.items()
                }
                assert request_log is not None
                time.sleep(0.5)  # the writer thread flushes what is queued
                with open(request_log) as lines:
                    logged = sum(1 for _ in lines)
                print(_metrics_cost(by, unpaid_by, cpu_ms, logged), flush=True)
            print()
            if EXACT in schemes and paid_exact != args.paid:
                print(
                    f"note: exact measured over {paid_exact} calls (--paid-exact), batch-settlement over {args.paid}:"
                    f" at {block_time} s blocks every exact call waits for its settlement to be mined"
                )
            if len(schemes) > 1:
                print("note: one payrouter server offers both schemes in one 402: the unpaid figures are shared")
            print()
            print(_table(rows, block_time))
            print()
            print(
                json.dumps(
                    {
                        "block_time": block_time,
                        "amount": amount,
                        **{r.scheme: r.to_json() for r in rows},
                        **({"official": theirs.to_json()} if theirs else {}),
                        "elapsed_s": round(time.perf_counter() - started, 1),
                    }
                )
            )
        finally:
            _stop(procs)
            delete_namespace(namespace)
            if args.metrics_cost:
                delete_namespace(namespace + "-bare")
            if request_log and os.path.exists(request_log):
                os.unlink(request_log)
        if timing_file and os.path.exists(timing_file):
            with open(timing_file) as source:
                print(_breakdown(json.load(source)))
            os.unlink(timing_file)


if __name__ == "__main__":
    main()
