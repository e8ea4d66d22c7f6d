"""Load test: K agents paying in a closed loop against ``payrouter serve --workers N`` for a fixed time.

Usage: .venv/bin/python bench/load.py [--workers 1] [--agents 32] [--seconds 10] [--redis single|cluster]
       [--gas-wallets 1] [--block-time 0] [--rpc-delay-ms 0] [--clients 1] [--profile] [--matrix]

One run starts a fresh anvil (automine, or a block every ``--block-time`` seconds), the dev
stablecoin, ``--agents`` funded agent keys, ``--gas-wallets`` funded gas wallets, the
deterministic test upstream (its own process), optionally the JSON-RPC proxy adding
``--rpc-delay-ms`` to every chain request (a hosted node's round trip), and ``payrouter serve``
from a config file, as an operator runs it, on the shared Redis (``--redis single``) or on a
local 3-master Redis Cluster (``--redis cluster``, `payrouter.sandbox.cluster.LocalCluster`).

Each agent loops: a fresh request (402), sign the quoted ``exact`` payment, pay it (200 with a
settlement receipt), again. Agents run in ``--clients`` load processes (aiohttp, uvloop). The
first 2 s warm up; then for ``--seconds`` it counts paid calls that end inside the window.

Reported per run: paid calls/s, latency p50/p99 of the paid request (verify + model call +
settlement; the 402 leg excluded) and of the whole round (402 + sign + paid), errors by kind,
and CPU milliseconds per paid call of the server processes (supervisor and workers, from
/proc), Redis, anvil, the upstream and the load clients. At the end it checks the money:
every receipt's transaction holds a ``Transfer`` of the quoted amount to ``pay_to``, their sum
is ``pay_to``'s balance, and ``payrouter ledger audit`` (journal vs chain) finds them equal.

``--profile`` samples every server process with py-spy (``pip install py-spy``) during the
window and prints the functions with the most samples (own and inclusive).

``--matrix`` runs the whole comparison and prints the README tables: workers 1, 2, 4 on one Redis
node and on the cluster (1 s blocks, 4 gas wallets), then gas wallets 1, 2, 4 (2 workers, 1 s
blocks, a 50 ms RPC round trip), 64 agents each. Every process a run starts is stopped and its
Redis keys deleted (the cluster is thrown away).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx

from bench.hygiene import exit_on_sigterm
from bench.timing import percentile
from payrouter.chain import TRANSFER_TOPIC
from payrouter.devchain import DevChain, free_port
from payrouter.sandbox.dev import EXAMPLE_TABLE
from pricing import PriceTable, estimate_chat_input_tokens, load_price_table, quote_route
from tests.price_toml import price_table_toml
from wallets import LocalSigner

REDIS_URL = "redis://127.0.0.1:6379/0"
CLI = Path(sys.executable).parent / "payrouter"
PY_SPY = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
MODEL = "gpt-4o-mini"
MAX_TOKENS = 64
WARM_UP = 2.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Spec:
    """One run's set-up."""

    workers: int = 1
    agents: int = 32
    seconds: float = 10.0
    redis: str = "single"
    gas_wallets: int = 1
    block_time: int = 0
    rpc_delay_ms: float = 0.0
    clients: int = 1
    profile: bool = False

    def label(self) -> str:
        chain = "automine" if not self.block_time else f"{self.block_time} s blocks"
        if self.rpc_delay_ms:
            chain += f", RPC +{self.rpc_delay_ms:g} ms"
        return (
            f"{self.workers} worker{'s' if self.workers > 1 else ''}, {self.redis} Redis, "
            f"{self.gas_wallets} gas wallet{'s' if self.gas_wallets > 1 else ''}, {chain}"
        )


@dataclass
class Result:
    """What one run measured."""

    spec: Spec
    paid: int = 0
    window: float = 0.0
    paid_ms: list[float] = field(default_factory=list)
    round_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    cpu_s: dict[str, float] = field(default_factory=dict)
    redis_clients: int | None = None
    money: str = ""
    audit: str = ""
    clean_stop: bool = False
    wallets_used: int = 0
    profile: str = ""

    @property
    def rate(self) -> float:
        return self.paid / self.window if self.window else 0.0

    def cpu_per_call(self, part: str) -> str:
        if not self.paid or part not in self.cpu_s:
            return "-"
        return f"{self.cpu_s[part] * 1000 / self.paid:.1f}"


# --- processes -------------------------------------------------------------------------------


def _serve_upstream(port: int) -> None:
    import uvicorn

    from payrouter.sandbox.upstream import TestUpstream

    uvicorn.run(TestUpstream().app, host="127.0.0.1", port=port, log_level="error", access_log=False)


def _cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid`` in clock ticks (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0
    return int(fields[11]) + int(fields[12])


def _tree(root: int) -> list[int]:
    """``root`` and every live descendant."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def _cpu_seconds(pids: list[int]) -> float:
    return sum(_cpu_ticks(pid) for pid in pids) / CLK_TCK


def _redis_cpu(urls: list[str]) -> float:
    import redis

    total = 0.0
    for url in urls:
        with redis.Redis.from_url(url) as client:
            info = client.info("cpu")
            total += float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
    return total


def _redis_clients(url: str) -> int:
    import redis

    with redis.Redis.from_url(url) as client:
        return int(client.info("clients")["connected_clients"])


# --- load clients ----------------------------------------------------------------------------


async def _agent(
    http: Any, url: str, agent: LocalSigner, marks: tuple[float, float], max_amount: int, out: dict[str, Any]
) -> None:
    from payrouter.client import build_payment_header, read_offer
    from payrouter.x402.wire import decode_header

    warm_until, end_at = marks
    while time.time() < end_at:
        body = {
            "model": MODEL,
            "max_tokens": MAX_TOKENS,
            "messages": [{"role": "user", "content": f"load {secrets.token_hex(6)}"}],
        }
        started = time.perf_counter()
        error = ""
        try:
            async with http.post(url, json=body) as reply:
                await reply.read()
                if reply.status != 402:
                    error = f"unpaid leg HTTP {reply.status}"
                    raise _Failed
                offer = read_offer(reply.headers).body
            header, requirement = build_payment_header(offer, agent, max_amount)
            paid_at = time.perf_counter()
            async with http.post(url, json=body, headers={"PAYMENT-SIGNATURE": header}) as reply:
                await reply.read()
                if reply.status != 200:
                    error = f"paid leg HTTP {reply.status}"
                    raise _Failed
                receipt = decode_header(reply.headers["payment-response"])
            done = time.perf_counter()
            out["payments"].append((str(receipt["transaction"]), int(requirement["amount"])))
            if warm_until <= time.time() <= end_at:
                out["paid"] += 1
                out["paid_ms"].append((done - paid_at) * 1000)
                out["round_ms"].append((done - started) * 1000)
        except _Failed:
            if warm_until <= time.time() <= end_at:
                out["errors"][error] += 1
        except Exception as exc:  # a transport failure is an error of the run, counted by kind
            if warm_until <= time.time() <= end_at:
                out["errors"][exc.__class__.__name__] += 1


class _Failed(Exception):
    pass


async def _drive(url: str, keys: list[str], marks: tuple[float, float], max_amount: int) -> dict[str, Any]:
    import aiohttp

    out: dict[str, Any] = {"paid": 0, "paid_ms": [], "round_ms": [], "errors": Counter(), "payments": []}
    agents = [LocalSigner(k) for k in keys]
    cpu: list[float] = []

    async def sample() -> None:
        for mark in marks:
            await asyncio.sleep(max(mark - time.time(), 0))
            times = os.times()
            cpu.append(times.user + times.system)

    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        await asyncio.gather(sample(), *(_agent(http, url, a, marks, max_amount, out) for a in agents))
    out["cpu_s"] = cpu[1] - cpu[0]
    return out


def _client_main(url: str, keys: list[str], max_amount: int, conn: Connection) -> None:
    """A load process: says it is ready (imports done), takes the window's marks, runs, reports."""
    import aiohttp  # noqa: F401  imported before "ready": a loaded machine takes seconds here
    import uvloop

    import payrouter.client  # noqa: F401

    conn.send("ready")
    marks: tuple[float, float] = conn.recv()
    conn.send(uvloop.run(_drive(url, keys, marks, max_amount)))
    conn.close()


# --- checks ----------------------------------------------------------------------------------


def _topic_address(address: str) -> str:
    return "0x" + "0" * 24 + address[2:].lower()


def _check_money(rpc_url: str, asset: str, pay_to: str, balance: int, payments: list[tuple[str, int]]) -> str:
    """Every receipt's transaction moved its amount to ``pay_to``; the sum is ``pay_to``'s balance."""
    by_tx = dict(payments)
    if len(by_tx) != len(payments):
        return f"FAIL: {len(payments) - len(by_tx)} transactions named by two receipts"
    want = [TRANSFER_TOPIC, None, _topic_address(pay_to)]
    moved = 0
    bad = 0
    hashes = list(by_tx)
    with httpx.Client(timeout=60) as http:
        for start in range(0, len(hashes), 500):
            chunk = hashes[start : start + 500]
            batch = [
                {"jsonrpc": "2.0", "id": i, "method": "eth_getTransactionReceipt", "params": [h]}
                for i, h in enumerate(chunk)
            ]
            replies = sorted(http.post(rpc_url, json=batch).json(), key=lambda r: r["id"])
            for tx_hash, reply in zip(chunk, replies, strict=True):
                receipt = reply.get("result") or {}
                value = sum(
                    int(log["data"], 16)
                    for log in receipt.get("logs", [])
                    if log["address"].lower() == asset.lower()
                    and [t.lower() for t in log["topics"]][0::2] == [want[0], want[2]]
                )
                if receipt.get("status") != "0x1" or value != by_tx[tx_hash]:
                    bad += 1
                moved += value
    total = sum(by_tx.values())
    if bad or not (moved == total == balance):
        return f"FAIL: {bad} receipts without their transfer; receipts {total}, transfers {moved}, balance {balance}"
    return f"ok: {len(by_tx)} transfers, {total} atomic"


def _audit(config: Path, env: dict[str, str]) -> str:
    done = subprocess.run(
        [str(CLI), "ledger", "audit", "--config", str(config), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    try:
        report = json.loads(done.stdout)
    except ValueError:
        return f"FAIL (exit {done.returncode}): {done.stderr.strip()[-300:]}"
    matched = report.get("matched")
    return f"{'ok' if done.returncode == 0 else 'FAIL'}: {matched} matched, equal={report.get('equal')}"


# --- profile ---------------------------------------------------------------------------------


def _profile_summary(files: list[Path], top: int = 18) -> str:
    """The functions with the most py-spy samples: own (the frame on top) and inclusive."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for path in files:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = stack.split(";")
            total += count
            own[frames[-1]] += count
            for frame in set(frames):
                inclusive[frame] += count
    if not total:
        return "no samples"
    lines = [f"{total} samples over the server processes (idle excluded)", "own:"]
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    lines.append("inclusive:")
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in inclusive.most_common(top + 12)]
    return "\n".join(lines)


# --- one run ---------------------------------------------------------------------------------


@contextmanager
def _process(args: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as sink:
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=sink)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if proc.stdout:
            proc.stdout.close()


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"payrouter serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"payrouter serve did not become healthy:\n{log.read_text()[-3000:]}")


def _write_config(
    folder: Path, table: PriceTable, redis_url: str, namespace: str, rpc_url: str, up: str, gas: int
) -> Path:
    (folder / "prices.toml").write_text(price_table_toml(table.model_dump(mode="json")))
    providers = "\n".join(f'[providers.{p}]\nbase_url = "{up}/v1"' for p in sorted({m.provider for m in table.models}))
    more = ", ".join(f'"LOAD_GAS_KEY_{i}"' for i in range(1, gas))
    path = folder / "payrouter.toml"
    path.write_text(
        f'price_table = "prices.toml"\nredis_url = "{redis_url}"\nnamespace = "{namespace}"\n'
        f"[server]\nmax_concurrency = 4096\n"
        f'[facilitator]\nmode = "local"\nrpc_url = "{rpc_url}"\ngas_key_env = "LOAD_GAS_KEY_0"\n'
        f"gas_keys_env = [{more}]\nreceipt_timeout = 60\n{providers}\n"
    )
    return path


def run(spec: Spec, log_dir: Path | None = None) -> Result:
    """Run one load test; every process it starts is stopped and its keys deleted on return."""
    result = Result(spec)
    folder = Path(tempfile.mkdtemp(prefix="payrouter-load-"))
    spawn = multiprocessing.get_context("spawn")
    namespace = f"payrouter-load-{secrets.token_hex(4)}"
    try:
        with ExitStack() as stack:
            chain = stack.enter_context(DevChain.start(block_time=spec.block_time or None))
            if spec.block_time:
                chain.rpc("evm_setAutomine", [True])  # the set-up is mined at once
            base = load_price_table(EXAMPLE_TABLE)
            token = chain.deploy_token(base.asset.name, "USDC", base.asset.version)
            pay_to = LocalSigner.generate().address
            table = base.on_chain(chain.network, token.address, pay_to).model_copy(update={"schemes": ["exact"]})
            agents = [LocalSigner.generate() for _ in range(spec.agents)]
            for agent in agents:
                token.mint(agent.address, 10**13)
            gas = [chain.new_account(10**24) for _ in range(spec.gas_wallets)]
            if spec.block_time:
                chain.rpc("evm_setAutomine", [False])
                chain.rpc("evm_setIntervalMining", [spec.block_time])
            rpc_url = chain.rpc_url
            if spec.rpc_delay_ms:
                proxy = stack.enter_context(
                    _process(
                        [
                            sys.executable,
                            "-m",
                            "payrouter.sandbox.rpc_faults",
                            "--upstream",
                            chain.rpc_url,
                            "--delay-ms",
                            str(spec.rpc_delay_ms),
                        ],
                        folder / "proxy.log",
                    )
                )
                assert proxy.stdout is not None
                rpc_url = json.loads(proxy.stdout.readline())["url"]
            redis_urls = [REDIS_URL]
            redis_url = REDIS_URL
            if spec.redis == "cluster":
                from payrouter.sandbox.cluster import LocalCluster

                cluster = stack.enter_context(LocalCluster(masters=3, replicas=1))
                redis_url = cluster.url
                redis_urls = [f"redis://{n.address}/0" for n in cluster.masters_now()]
            else:
                stack.callback(_delete_namespace, namespace)
            up_port = free_port()
            upstream = spawn.Process(target=_serve_upstream, args=(up_port,), daemon=True)
            upstream.start()
            stack.callback(_stop_process, upstream)
            up_url = f"http://127.0.0.1:{up_port}"
            config = _write_config(folder, table, redis_url, namespace, rpc_url, up_url, spec.gas_wallets)
            env = {**os.environ, **{f"LOAD_GAS_KEY_{i}": g.unsafe_export_private_key() for i, g in enumerate(gas)}}
            env.pop("PROMETHEUS_MULTIPROC_DIR", None)
            clients_before = _redis_clients(REDIS_URL) if spec.redis == "single" else None
            port = free_port()
            server_log = folder / "serve.log"
            args = [str(CLI), "serve", "--config", str(config), "--port", str(port), "--workers", str(spec.workers)]
            server = stack.enter_context(_process(args, server_log, env))
            url = f"http://127.0.0.1:{port}"
            _wait_healthy(url, server, server_log)
            _wait_workers(url, spec.workers)
            server_pids = _tree(server.pid)
            max_amount = (
                quote_route(
                    table, MODEL, estimate_chat_input_tokens([{"role": "user", "content": "x"}]), MAX_TOKENS
                ).amount
                * 2
            )

            pipes = []
            keys = [a.unsafe_export_private_key() for a in agents]
            for i in range(spec.clients):
                mine, theirs = spawn.Pipe()
                proc = spawn.Process(
                    target=_client_main,
                    args=(f"{url}/v1/chat/completions", keys[i :: spec.clients], max_amount, theirs),
                    daemon=True,
                )
                proc.start()
                stack.callback(_stop_process, proc)
                pipes.append(mine)
            for pipe in pipes:
                if not pipe.poll(120) or pipe.recv() != "ready":
                    raise RuntimeError("a load client did not start")
            start = time.time() + 0.2
            marks = (start + WARM_UP, start + WARM_UP + spec.seconds)
            for pipe in pipes:
                pipe.send(marks)
            others = {"anvil": [chain._process.pid], "upstream": [upstream.pid or 0]}
            spies: list[tuple[subprocess.Popen[bytes], Path]] = []
            time.sleep(max(marks[0] - time.time(), 0))
            before = {"server": _cpu_seconds(server_pids), "redis": _redis_cpu(redis_urls)}
            before |= {k: _cpu_seconds(v) for k, v in others.items()}
            if spec.profile:
                for pid in server_pids:
                    stacks = folder / f"spy-{pid}.txt"
                    command = [PY_SPY, "record", "-p", str(pid), "-d", str(int(spec.seconds)), "-r", "200", "-f", "raw"]
                    command += ["-o", str(stacks)]
                    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    spies.append((spy, stacks))
            if spec.redis == "single":
                time.sleep(min(spec.seconds / 2, 3))
                assert clients_before is not None
                result.redis_clients = _redis_clients(REDIS_URL) - clients_before
            time.sleep(max(marks[1] - time.time(), 0))
            after = {"server": _cpu_seconds(server_pids), "redis": _redis_cpu(redis_urls)}
            after |= {k: _cpu_seconds(v) for k, v in others.items()}
            result.cpu_s = {k: after[k] - before[k] for k in before}
            payments: list[tuple[str, int]] = []
            client_cpu = 0.0
            for pipe in pipes:
                out = pipe.recv()
                result.paid += out["paid"]
                result.paid_ms += out["paid_ms"]
                result.round_ms += out["round_ms"]
                result.errors.update(out["errors"])
                payments += out["payments"]
                client_cpu += out["cpu_s"]
            result.cpu_s["clients"] = client_cpu
            result.window = spec.seconds
            for spy, _ in spies:
                spy.wait(60)
            if spies:
                result.profile = _profile_summary([stacks for _, stacks in spies])
            result.wallets_used = _wallets_used(chain, gas)
            server.send_signal(signal.SIGTERM)
            result.clean_stop = server.wait(60) == 0
            result.money = _check_money(chain.rpc_url, token.address, pay_to, token.balance_of(pay_to), payments)
            result.audit = _audit(config, env)
            if log_dir is not None:
                shutil.copy(server_log, log_dir / f"serve-{namespace}.log")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return result


def _wallets_used(chain: DevChain, gas: list[LocalSigner]) -> int:
    return sum(1 for g in gas if chain.w3.eth.get_transaction_count(g.address, "pending") > 0)


def _wait_workers(url: str, workers: int, timeout: float = 60) -> None:
    """Until every worker has answered once (each opened its connections)."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < workers and time.monotonic() < deadline:
        seen.add(int(httpx.get(f"{url}/healthz", timeout=5).json().get("worker", 0)))


def _stop_process(proc: multiprocessing.process.BaseProcess) -> None:
    if proc.pid is not None and proc.is_alive():
        proc.terminate()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join(5)


def _delete_namespace(namespace: str) -> None:
    from tests.redis_keys import delete_namespace

    delete_namespace(REDIS_URL, namespace)


# --- report ----------------------------------------------------------------------------------


def machine() -> str:
    """The machine, named: host, CPU model, cores, memory."""
    model = ""
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as info:
        mem_kb = int(info.readline().split()[1])
    return (
        f"{platform.node()}: {model}, {os.cpu_count()} cores, {mem_kb // 2**20} GB, Python {platform.python_version()}"
    )


HEADER = (
    "| set-up | paid calls/s | paid p50 ms | paid p99 ms | round p50 ms | errors | "
    "CPU ms per paid call: server / Redis / anvil / upstream / clients | Redis conns | money | audit | stop |"
)


def row(r: Result) -> str:
    def pct(values: list[float], q: float) -> str:
        return f"{percentile(values, q):.1f}" if values else "-"

    errors = sum(r.errors.values())
    cpu = " / ".join(r.cpu_per_call(p) for p in ("server", "redis", "anvil", "upstream", "clients"))
    return (
        f"| {r.spec.label()} | {r.rate:.1f} | {pct(r.paid_ms, 0.5)} | {pct(r.paid_ms, 0.99)} | "
        f"{pct(r.round_ms, 0.5)} | {errors} | {cpu} | {r.redis_clients if r.redis_clients is not None else '-'} | "
        f"{r.money.split(':')[0]} | {r.audit.split(':')[0]} | {'clean' if r.clean_stop else 'NOT CLEAN'} |"
    )


def table(results: list[Result]) -> str:
    lines = [HEADER, _separator()]
    lines += [row(r) for r in results]
    return "\n".join(lines)


def _separator() -> str:
    return "|" + "|".join("---" for _ in range(HEADER.count("|") - 1)) + "|"


def details(r: Result) -> str:
    lines = [f"{r.spec.label()}: {r.paid} paid calls in {r.window:g} s, agents {r.spec.agents}"]
    if r.errors:
        lines.append("  errors: " + ", ".join(f"{k}: {v}" for k, v in r.errors.most_common()))
    lines.append(f"  money: {r.money}")
    lines.append(f"  audit: {r.audit}")
    lines.append(f"  gas wallets that sent: {r.wallets_used} of {r.spec.gas_wallets}")
    if r.profile:
        lines.append("  profile:\n" + "\n".join("    " + line for line in r.profile.splitlines()))
    return "\n".join(lines)


def matrix(base: Spec) -> list[tuple[str, list[Spec]]]:
    """The README's comparison: scale-out on a chain with 1 s blocks (4 gas wallets, so the
    wallets are not the limit), then settlement throughput by gas wallet with a 50 ms RPC round
    trip (a hosted node), where one wallet's nonce lock is."""
    agents = max(base.agents, 64)
    scale = [
        replace(base, workers=w, redis=redis, gas_wallets=4, block_time=1, agents=agents)
        for redis in ("single", "cluster")
        for w in (1, 2, 4)
    ]
    gas = [replace(base, workers=2, gas_wallets=g, block_time=1, rpc_delay_ms=50.0, agents=agents) for g in (1, 2, 4)]
    return [
        ("Workers, one Redis node vs a Redis Cluster (1 s blocks, 4 gas wallets)", scale),
        ("Gas wallets (2 workers, 1 s blocks, 50 ms RPC round trip)", gas),
    ]


def main() -> None:
    exit_on_sigterm()  # a stopped run still stops its servers and deletes its keys
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--agents", type=int, default=32, help="paying agents, each in a closed loop")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window (after a 2 s warm-up)")
    parser.add_argument("--redis", choices=("single", "cluster"), default="single")
    parser.add_argument("--gas-wallets", type=int, default=1)
    parser.add_argument("--block-time", type=int, default=0, help="anvil interval mining, seconds (0: automine)")
    parser.add_argument("--rpc-delay-ms", type=float, default=0.0, help="added to every chain RPC (a remote node)")
    parser.add_argument("--clients", type=int, default=1, help="load-generating processes")
    parser.add_argument("--profile", action="store_true", help="py-spy the server processes during the window")
    parser.add_argument("--matrix", action="store_true", help="run the README comparison and print its tables")
    parser.add_argument("--keep-logs", help="copy each run's server log into this directory")
    args = parser.parse_args()
    base = Spec(
        workers=args.workers,
        agents=args.agents,
        seconds=args.seconds,
        redis=args.redis,
        gas_wallets=args.gas_wallets,
        block_time=args.block_time,
        rpc_delay_ms=args.rpc_delay_ms,
        clients=args.clients,
        profile=args.profile,
    )
    log_dir = Path(args.keep_logs) if args.keep_logs else None
    groups = matrix(base) if args.matrix else [("", [base])]
    print(f"machine: {machine()}", flush=True)
    outputs = []
    for title, specs in groups:
        results = []
        for spec in specs:
            result = run(spec, log_dir)
            print(details(result), flush=True)
            results.append(result)
        outputs.append((title, table(results)))
    print()
    for title, text in outputs:
        if title:
            print(f"**{title}**\n")
        print(text + "\n")


if __name__ == "__main__":
    main()
