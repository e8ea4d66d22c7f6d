"""Chaos run: paying agents and attackers against two payrouter instances while the chain RPC
and Redis fail under them; then the money is checked end to end.

Usage: .venv/bin/python bench/chaos.py [--agents 30] [--seconds 60] [--block-time 1] [--seed N]

Everything runs in its own process and is stopped (by PID / process group) whatever happens:
anvil (a block every ``--block-time`` s, so settlements take real time and cancellations race
them) with the dev token; a private ``redis-server`` (AOF: appendonly yes, appendfsync everysec,
no RDB) in a temp dir; the test model server (first-token and chunk delays, so a stream lasts
~1-2 s); the JSON-RPC fault proxy in front of anvil; and two ``payrouter serve`` processes on
one config (the example price table re-pointed at the chain, the private Redis, one namespace,
the local facilitator on the proxy with one shared gas key, the background reconciler every
5 s, receipt_timeout 3 s).

``--agents`` agents (each its own funded key) loop for ``--seconds``: about half the calls
streamed, unique prompts, max_tokens 40-120, alternating servers; unpaid POST -> 402 offer ->
signed ``exact`` payment -> paid POST. Like a good client they re-send the same payment a few
times, with a short backoff, on a 402 ``settlement_pending`` (or another transient reason:
``unexpected_verify_error`` / ``unexpected_settle_error``, the RPC failing before anything was
sent), a 503, a 409 (the same payment still in flight) or a transport error. One agent in six
is an attacker: on its streamed calls it submits ``cancelAuthorization`` for its own
authorization from its own relayer account right after sending the paid request.

Meanwhile the fault proxy cycles pass -> lose_send -> pass -> hide_receipt -> pass -> down ->
pass, and Redis is killed (SIGKILL) once or twice and restarted on the same port and dir ~1-2 s
later.

Afterwards (proxy on pass): ``payrouter ledger reconcile`` passes until no open record is left
but those still legitimately waiting (or ``--reconcile-limit`` s), ``payrouter ledger audit``,
then the checks that must hold (exit 1 if one fails):

- transfers on chain to pay_to (count, sum) == settled journal records (count, sum), and the
  audit finds no difference;
- every answer an agent received belongs to a payment that is settled, owed or unpaid (no
  answer given away unrecorded);
- payers charged without a retrievable answer: every settled record whose answer the journal
  no longer keeps, and every payment charged on chain (``AuthorizationUsed``) whose agent never
  got its answer, is presented again once; none may fail;
- the unconfirmed stream exposure (highest ever reserved, and per payer as sampled from Redis
  during the run) stays within the price table's limits;
- no open record is left that the reconciler should have ended; both servers still run.

The streaming exposure limits default to tight values (``--max-unconfirmed-per-payer 0.003``,
``--max-unconfirmed-total 0.015`` USD, where the example table has 1.00 / 100.00) so that
streams over them take the hold-until-settled path; pass the example's values to keep them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
from redis import asyncio as aioredis
from web3 import Web3

from payrouter.chain import AUTHORIZATION_USED_TOPIC, TRANSFER_TOPIC
from payrouter.client import build_payment_header, read_offer
from payrouter.devchain import DevChain, DevChainError, DevToken, die_with_parent, free_port
from payrouter.journal import PaymentRecord, State
from payrouter.journal.open import open_journal
from payrouter.sandbox.dev import EXAMPLE_TABLE
from pricing import PriceTable, load_price_table
from tests.price_toml import price_table_toml
from wallets import CancelAuthorization, Eip712Domain, LocalSigner

REPO = Path(__file__).resolve().parent.parent
CLI = Path(sys.executable).parent / "payrouter"
NAMESPACE = "chaos"
GAS_ENV = "PAYROUTER_CHAOS_GAS_KEY"
AGENT_FUNDS = 10**12  # atomic units: a million dev dollars each
MAX_AMOUNT = 10**6  # the most an agent signs for one call
RETRIES = 6  # re-sends of the same payment after the first try
TRANSIENT = {"settlement_pending", "unexpected_verify_error", "unexpected_settle_error"}
EXPIRY_MARGIN_S = 30  # payrouter.reconciler: expired only this long after validBefore
STALE_SETTLING_MS = 60_000  # payrouter.reconciler: a settling record this old has lost its worker


# processes


class Processes:
    """Every child this run started, each in its own process group, stopped by PID."""

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self.lock = threading.Lock()

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        log: Path | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        stdout_pipe: bool = False,
        threads_running: bool = False,
    ) -> subprocess.Popen[bytes]:
        sink = log.open("ab") if log is not None else None
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout_pipe else (sink or subprocess.DEVNULL),
                stderr=sink or subprocess.DEVNULL,
                env=env,
                cwd=cwd,
                start_new_session=True,
                # a preexec_fn is not safe once threads run (the restart of Redis mid-run)
                preexec_fn=None if threads_running else die_with_parent,
            )
        finally:
            if sink is not None:
                sink.close()  # the child keeps its own descriptor
        with self.lock:
            self.procs[name] = proc
            if log is not None:
                self.logs[name] = log
        return proc

    def alive(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    def kill(self, name: str, sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
        with self.lock:
            proc = self.procs.get(name)
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()

    def stop_all(self) -> None:
        for name in reversed(list(self.procs)):
            with contextlib.suppress(Exception):
                self.kill(name)


def _redis_argv(port: int, folder: Path) -> list[str]:
    return [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(folder),
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--save",
        "",
        "--daemonize",
        "no",
        "--logfile",
        str(folder / "redis.log"),
    ]


def _wait_redis(url: str, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {proc.returncode}")
            with contextlib.suppress(redis.RedisError):
                if client.ping():
                    # PING answers while the AOF is still loading; wait until it is loaded
                    if int(client.info("persistence").get("loading", 0)) == 0:
                        return
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not answer PING")
            time.sleep(0.02)
    finally:
        client.close()


def _wait_healthy(url: str, procs: Processes, name: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if not procs.alive(name):
            raise RuntimeError(f"{name} exited during start-up:\n{_tail(procs.logs.get(name))}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not become healthy at {url}:\n{_tail(procs.logs.get(name))}")
        time.sleep(0.1)


def _tail(path: Path | None, chars: int = 3000) -> str:
    if path is None or not path.exists():
        return ""
    return path.read_text(errors="replace")[-chars:]


def _read_ready_line(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> dict[str, Any]:
    assert proc.stdout is not None
    result: dict[str, bytes] = {}
    reader = threading.Thread(target=lambda: result.update(line=proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    line = result.get("line", b"")
    if not line:
        raise RuntimeError("the fault proxy printed no ready line")
    ready: dict[str, Any] = json.loads(line)
    return ready


# the chain


def _mint_all(chain: DevChain, token: DevToken, addresses: list[str], amount: int) -> None:
    """Mint to every address in one go (consecutive nonces), then wait for the blocks."""
    w3 = chain.w3
    nonce = w3.eth.get_transaction_count(chain.deployer.address, "pending")
    base = int(w3.eth.get_block("latest").get("baseFeePerGas", 0))
    hashes = []
    for i, address in enumerate(addresses):
        data = token.contract.encode_abi("mint", [Web3.to_checksum_address(address), amount])
        tx = {
            "chainId": chain.chain_id,
            "nonce": nonce + i,
            "gas": 200_000,
            "maxFeePerGas": 2 * 10**9 + 2 * base,
            "maxPriorityFeePerGas": 10**9,
            "to": token.address,
            "data": data,
        }
        hashes.append(w3.eth.send_raw_transaction(chain.deployer.sign_transaction(tx)))
    for tx_hash in hashes:
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60, poll_latency=0.05)
        if receipt["status"] != 1:
            raise DevChainError(f"mint {tx_hash.hex()} reverted")


def _cancel(token: DevToken, payer: LocalSigner, relayer: LocalSigner, nonce: str) -> str:
    """The attack: cancel our own authorization (signed by the payer, sent by the relayer)."""
    cancel = CancelAuthorization(authorizer=payer.address, nonce=bytes.fromhex(nonce[2:]))
    domain = Eip712Domain(token.domain.name, token.domain.version, token.chain.chain_id, token.address)
    signature = payer.sign_typed_data(domain, cancel)
    try:
        token.cancel_authorization(relayer, cancel, signature)
    except DevChainError:
        return "cancel_reverted"  # the transfer was mined first
    except Exception as exc:
        return f"cancel_error:{exc.__class__.__name__}"
    return "cancel_mined"


def _topic(address: str) -> str:
    return "0x" + "0" * 24 + address[2:].lower()


def _logs(chain: DevChain, address: str, topics: list[str | None]) -> list[Any]:
    return list(
        chain.w3.eth.get_logs(
            {"address": Web3.to_checksum_address(address), "fromBlock": 0, "toBlock": "latest", "topics": topics}
        )
    )


def _hex(value: Any) -> str:
    text = value.hex() if isinstance(value, bytes | bytearray) else str(value)
    text = text.lower()
    return text if text.startswith("0x") else "0x" + text


# the agents


@dataclass
class Payment:
    """One signed payment as its agent used it."""

    id: str
    agent: int
    attacker: bool
    payer: str
    nonce: str
    stream: bool
    amount: int
    url: str
    body: dict[str, Any]
    header: str
    attempts: int = 0
    served: bool = False  # got a 200 with the whole answer
    cut: bool = False  # a stream cut for a failed payment
    outcome: str = "in_flight"
    history: list[str] = field(default_factory=list)
    attack: str = ""
    started: float = field(default_factory=time.monotonic)


@dataclass
class Reply:
    """What one paid request got back."""

    status: int
    reason: str = ""
    content: bool = False
    cut: bool = False
    done: bool = False
    receipt: dict[str, Any] | None = None


def _b64json(value: str | None) -> dict[str, Any]:
    if not value:
        return {}
    try:
        decoded = json.loads(base64.b64decode(value))
    except ValueError:
        return {}
    return decoded if isinstance(decoded, dict) else {}


def _reason_402(response: httpx.Response) -> str:
    receipt = _b64json(response.headers.get("payment-response"))
    if receipt.get("errorReason"):
        return str(receipt["errorReason"])
    required = _b64json(response.headers.get("payment-required"))
    if required.get("error"):
        return str(required["error"])
    with contextlib.suppress(ValueError):
        body = response.json()
        error = body.get("error")
        return str(error.get("type") if isinstance(error, dict) else error)
    return "unknown"


def _parse_sse(text: str, reply: Reply) -> None:
    for block in text.split("\n\n"):
        event, data = None, []
        for line in block.splitlines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        payload = "\n".join(data)
        if not payload:
            continue
        if payload == "[DONE]":
            reply.done = True
            continue
        try:
            obj = json.loads(payload)
        except ValueError:
            continue
        if event == "x402.payment" or (isinstance(obj, dict) and obj.get("type") == "x402.payment"):
            reply.receipt = obj
        elif isinstance(obj, dict) and isinstance(obj.get("error"), dict):
            if obj["error"].get("type") == "payment_error":
                reply.cut = True
        elif isinstance(obj, dict):
            for choice in obj.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    reply.content = True


async def _send(http: httpx.AsyncClient, p: Payment, url: str) -> Reply:
    headers = {"PAYMENT-SIGNATURE": p.header}
    if p.stream:
        async with http.stream("POST", url, json=p.body, headers=headers) as response:
            raw = await response.aread()
    else:
        response = await http.post(url, json=p.body, headers=headers)
        raw = response.content
    reply = Reply(response.status_code)
    if response.status_code == 402:
        reply.reason = _reason_402(response)
    elif response.status_code == 200:
        if "text/event-stream" in response.headers.get("content-type", ""):
            _parse_sse(raw.decode(errors="replace"), reply)
        else:
            with contextlib.suppress(ValueError):
                body = json.loads(raw)
                content = ((body.get("choices") or [{}])[0].get("message") or {}).get("content")
                reply.content = bool(content)
                reply.done = True
            reply.receipt = _b64json(response.headers.get("payment-response")) or None
    return reply


def _answered(p: Payment, reply: Reply) -> bool:
    """A 200 carrying the whole answer (a stream: content, [DONE] and its receipt, not cut)."""
    if reply.status != 200 or not reply.content or reply.cut:
        return False
    return reply.done and (reply.receipt is not None or not p.stream)


@dataclass
class Run:
    """Shared state of the load phase."""

    urls: list[str]
    token: DevToken
    agents: list[LocalSigner]
    relayers: dict[int, LocalSigner]
    deadline: float
    seconds: float
    seed: int
    pool: ThreadPoolExecutor
    stats: Counter[str] = field(default_factory=Counter)
    payments: list[Payment] = field(default_factory=list)
    requests: int = 0
    odd: list[str] = field(default_factory=list)  # transport errors, 409s and 500s, with their times

    def note(self, started: float, text: str) -> None:
        if len(self.odd) < 200:
            self.odd.append(f"t+{time.monotonic() - started:5.1f}s {text}")


async def _pay(run: Run, http: httpx.AsyncClient, p: Payment, first_server: int) -> None:
    loop = asyncio.get_running_loop()
    for attempt in range(1 + RETRIES):
        url = run.urls[(first_server + attempt) % 2] + "/v1/chat/completions"  # retries alternate servers
        p.attempts += 1
        run.requests += 1
        if attempt:
            run.stats["paid_retries"] += 1
        cancel: asyncio.Future[str] | None = None
        try:
            if attempt == 0 and p.attacker and p.stream:
                sending = asyncio.ensure_future(_send(http, p, url))
                await asyncio.sleep(0.05)  # the request is in; the model has not answered yet
                relayer = run.relayers[p.agent]
                cancel = loop.run_in_executor(run.pool, _cancel, run.token, run.agents[p.agent], relayer, p.nonce)
                reply = await sending
            else:
                reply = await _send(http, p, url)
        except httpx.HTTPError as exc:
            what = f"transport:{exc.__class__.__name__}"
            run.stats["paid_transport_error"] += 1
            run.note(run.deadline - run.seconds, f"paid {what} {url} {p.id[-8:]}")
            p.history.append(what)
            reply = None
        finally:
            if cancel is not None:
                p.attack = await cancel
                run.stats[f"attack_{p.attack}"] += 1
        if reply is not None:
            what = f"{reply.status}" + (f":{reply.reason}" if reply.reason else "")
            p.history.append(what)
            run.stats[f"paid_{what}"] += 1
        if p.attack and attempt == 0:  # what the attacker's stream got
            got = "transport" if reply is None else "cut" if reply.cut else what
            run.stats[f"attack_reply:{'answered' if reply is not None and _answered(p, reply) else got}"] += 1
        if reply is not None:
            if reply.status in (409, 500):
                run.note(run.deadline - run.seconds, f"paid {what} {url} {p.id[-8:]}")
            if reply.status == 200:
                if reply.cut:
                    p.cut = True
                    p.outcome = "cut"
                    run.stats["stream_cut"] += 1
                    return
                if _answered(p, reply):
                    p.served = True
                    p.outcome = "served"
                    if p.stream and reply.receipt is not None and not reply.receipt.get("success"):
                        run.stats[f"stream_served_receipt_{reply.receipt.get('errorReason')}"] += 1
                    return
                what = "200_incomplete"  # a stream that ended early: present the payment again
                run.stats["paid_200_incomplete"] += 1
            elif reply.status == 402 and reply.reason not in TRANSIENT:
                p.outcome = f"402:{reply.reason}"
                return
            elif reply.status not in (402, 409, 503):
                p.outcome = f"http_{reply.status}"
                return
        await asyncio.sleep(0.4 * (attempt + 1))
    p.outcome = f"gave_up:{p.history[-1] if p.history else '?'}"
    run.stats["paid_gave_up"] += 1


async def _agent(run: Run, index: int, attacker: bool) -> None:
    signer = run.agents[index]
    rng = random.Random(run.seed * 1000 + index)
    timeout = httpx.Timeout(30.0, connect=5.0)
    async with httpx.AsyncClient(timeout=timeout) as http:
        n = 0
        while time.monotonic() < run.deadline:
            server = (index + n) % 2
            n += 1
            stream = rng.random() < 0.5
            body: dict[str, Any] = {
                "model": "auto",
                "max_tokens": rng.randint(40, 120),
                "messages": [{"role": "user", "content": f"chaos agent {index} call {n} {secrets.token_hex(6)}"}],
            }
            if stream:
                body["stream"] = True
            url = run.urls[server] + "/v1/chat/completions"
            run.requests += 1
            try:
                unpaid = await http.post(url, json=body)
            except httpx.HTTPError as exc:
                run.stats[f"unpaid_transport:{exc.__class__.__name__}"] += 1
                run.note(run.deadline - run.seconds, f"unpaid transport:{exc.__class__.__name__} {url}")
                await asyncio.sleep(0.3)
                continue
            run.stats[f"unpaid_{unpaid.status_code}"] += 1
            if unpaid.status_code != 402:
                await asyncio.sleep(0.3)
                continue
            offer = read_offer(unpaid.headers).body
            header, requirement = build_payment_header(offer, signer, MAX_AMOUNT)
            nonce = str(_b64json(header)["payload"]["authorization"]["nonce"]).lower()
            p = Payment(
                id=f"exact:{signer.address.lower()}:{nonce}",
                agent=index,
                attacker=attacker,
                payer=signer.address,
                nonce=nonce,
                stream=stream,
                amount=int(requirement["amount"]),
                url=url,
                body=body,
                header=header,
            )
            run.payments.append(p)
            await _pay(run, http, p, server)


# the chaos


@dataclass
class Chaos:
    """Drives the fault proxy and kills Redis; samples the exposure hash from Redis."""

    proxy_url: str
    redis_url: str
    redis_port: int
    redis_dir: Path
    procs: Processes
    rng: random.Random
    started: float
    timeline: list[str] = field(default_factory=list)
    redis_down_s: list[float] = field(default_factory=list)
    per_payer_high: dict[str, int] = field(default_factory=dict)
    total_high_sampled: int = 0
    samples: int = 0

    def note(self, text: str) -> None:
        self.timeline.append(f"t+{time.monotonic() - self.started:5.1f}s {text}")

    async def set_mode(self, mode: str) -> None:
        async with httpx.AsyncClient(timeout=5) as http:
            for _ in range(20):
                try:
                    (await http.post(f"{self.proxy_url}/_faults", json={"mode": mode})).raise_for_status()
                    self.note(f"rpc {mode}")
                    return
                except httpx.HTTPError:
                    await asyncio.sleep(0.1)
        raise RuntimeError(f"cannot switch the fault proxy to {mode}")

    async def faults(self, deadline: float) -> None:
        cycle = ["lose_send", "pass", "hide_receipt", "pass", "down", "pass"]
        await self.set_mode("pass")
        await asyncio.sleep(min(self.rng.uniform(2, 4), max(0.0, deadline - time.monotonic())))
        i = 0
        while time.monotonic() < deadline:
            mode = cycle[i % len(cycle)]
            i += 1
            await self.set_mode(mode)
            hold = self.rng.uniform(3, 5) if mode != "pass" else self.rng.uniform(2, 4)
            await asyncio.sleep(max(0.0, min(hold, deadline - time.monotonic())))
        await self.set_mode("pass")

    def _restart_redis(self) -> None:
        proc = self.procs.start("redis", _redis_argv(self.redis_port, self.redis_dir), threads_running=True)
        _wait_redis(self.redis_url, proc)

    async def redis_kills(self, seconds: float) -> None:
        when = [0.3, 0.65] if seconds >= 30 else [0.45]
        for fraction in when:
            await asyncio.sleep(max(0.0, self.started + fraction * seconds - time.monotonic()))
            proc = self.procs.procs["redis"]
            os.kill(proc.pid, signal.SIGKILL)
            await asyncio.to_thread(proc.wait, 10)
            down_at = time.monotonic()
            self.note("redis SIGKILL")
            await asyncio.sleep(self.rng.uniform(1.0, 2.0))
            await asyncio.to_thread(self._restart_redis)
            self.redis_down_s.append(time.monotonic() - down_at)
            self.note(f"redis up again (down {self.redis_down_s[-1]:.1f} s)")

    async def sample_exposure(self, stop: asyncio.Event) -> None:
        key = f"{NAMESPACE}:{{j}}:exposure"
        client = aioredis.Redis.from_url(self.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            while not stop.is_set():
                try:
                    entries = await client.hgetall(key)
                except (redis.RedisError, OSError):
                    entries = None
                if entries is not None:
                    self.samples += 1
                    now = int(time.time() * 1000)
                    mine: Counter[str] = Counter()
                    for raw in entries.values():
                        text = raw.decode() if isinstance(raw, bytes) else str(raw)
                        payer, amount, expires = text.split("|")
                        if int(expires) > now:
                            mine[payer.lower()] += int(amount)
                    for who, reserved in mine.items():
                        self.per_payer_high[who] = max(self.per_payer_high.get(who, 0), reserved)
                    self.total_high_sampled = max(self.total_high_sampled, sum(mine.values()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.1)
        finally:
            await client.aclose()


async def _load(run: Run, chaos: Chaos, attackers: set[int], seconds: float, drain_limit: float) -> dict[str, Any]:
    stop = asyncio.Event()
    sampler = asyncio.create_task(chaos.sample_exposure(stop))
    faults = asyncio.create_task(chaos.faults(run.deadline))
    kills = asyncio.create_task(chaos.redis_kills(seconds))
    agents = [asyncio.create_task(_agent(run, i, i in attackers)) for i in range(len(run.agents))]
    await asyncio.gather(faults, kills)  # both end by the deadline (a restart in progress finishes)
    chaos.note("load ends: agents finish the payments in flight")
    drain_started = time.monotonic()
    done, pending = await asyncio.wait(agents, timeout=drain_limit)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    crashed = [repr(t.exception()) for t in done if not t.cancelled() and t.exception() is not None]
    stop.set()
    await sampler
    return {"drain_s": time.monotonic() - drain_started, "agents_cut_at_drain": len(pending), "agent_crashes": crashed}


# after the run


def _ledger(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    done = subprocess.run([str(CLI), "ledger", *args], capture_output=True, text=True, env=env, timeout=120)
    return done.returncode, done.stdout, done.stderr


async def _journal_state(redis_url: str) -> tuple[list[PaymentRecord], list[PaymentRecord], tuple[int, int]]:
    journal = open_journal(redis_url, NAMESPACE)
    try:
        records = await journal.records(0, None, limit=10**8)
        open_records = await journal.open_records(limit=10**8)
        exposure = await journal.exposure()
    finally:
        await journal.close()
    return records, open_records, exposure


async def _missing_answers(redis_url: str, ids: list[str]) -> list[str]:
    journal = open_journal(redis_url, NAMESPACE)
    try:
        return [record_id for record_id in ids if await journal.answer(record_id) is None]
    finally:
        await journal.close()


def _legitimately_waiting(record: PaymentRecord, chain: DevChain) -> bool:
    """The reconciler's own rules for records it leaves alone for now."""
    now = time.time()
    if now > record.valid_before + EXPIRY_MARGIN_S:
        return False
    if record.state in (State.CLAIMED, State.SERVING):
        return True  # its worker may still be within the authorization's life
    if record.state == State.SETTLING:
        return int(now * 1000) - record.updated_at < STALE_SETTLING_MS
    if record.state == State.PENDING and record.tx:
        with contextlib.suppress(Exception):
            known = chain.w3.eth.get_transaction(record.tx)  # type: ignore[arg-type]
            mined = known.get("blockNumber") is not None
            return not mined  # still in the mempool
    return False


async def _present_again(urls: list[str], payments: list[Payment]) -> list[dict[str, Any]]:
    """Each payment presented once more; returns the ones that did not get their answer."""
    failures: list[dict[str, Any]] = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=5.0)) as http:
        for p in payments:
            url = p.url
            try:
                reply = await _send(http, p, url)
            except httpx.HTTPError as exc:
                failures.append({"id": p.id, "got": f"transport:{exc.__class__.__name__}", "history": p.history})
                continue
            if not _answered(p, reply):
                got = f"{reply.status}" + (f":{reply.reason}" if reply.reason else "")
                if reply.status == 200:
                    got += f" content={reply.content} cut={reply.cut} done={reply.done}"
                failures.append(
                    {"id": p.id, "stream": p.stream, "got": got, "history": p.history, "outcome": p.outcome}
                )
    return failures


def _unanswered(payments: list[Payment], by_id: dict[str, PaymentRecord], started: float) -> dict[str, Any]:
    """Payments that got no answer, by outcome, with a few examples each."""
    groups: dict[str, dict[str, Any]] = {}
    for p in payments:
        if p.served:
            continue
        group = groups.setdefault(p.outcome, {"count": 0, "examples": []})
        group["count"] += 1
        if len(group["examples"]) < 3:
            record = by_id.get(p.id)
            group["examples"].append(
                {
                    "id": p.id,
                    "t": round(p.started - started, 1),
                    "stream": p.stream,
                    "attacker": p.attacker,
                    "history": p.history,
                    "record": f"{record.state} ({record.reason})" if record else "none",
                }
            )
    return dict(sorted(groups.items(), key=lambda kv: -int(kv[1]["count"])))


_NOISE = re.compile(r"0x[0-9a-fA-F]+|\b\d+(\.\d+)?\b")


def _log_summary(procs: Processes) -> dict[str, Any]:
    """ERROR / WARNING / traceback lines of the servers' logs, grouped by their shape."""
    out: dict[str, Any] = {}
    for name in ("payrouter-a", "payrouter-b"):
        path = procs.logs.get(name)
        if path is None or not path.exists():
            continue
        levels: Counter[str] = Counter()
        shapes: Counter[str] = Counter()
        for line in path.read_text(errors="replace").splitlines():
            for level in ("ERROR", "WARNING", "CRITICAL", "Traceback"):
                if level in line:
                    levels[level] += 1
                    if level != "WARNING":
                        text = line.split(" ", 2)[-1] if level != "Traceback" else line
                        shapes[_NOISE.sub("#", text)[:200]] += 1
        out[name] = {"counts": dict(levels), "errors": shapes.most_common(8)}
    return out


def _table_for(chain: DevChain, token: DevToken, pay_to: str, args: argparse.Namespace) -> dict[str, Any]:
    base = load_price_table(EXAMPLE_TABLE).on_chain(chain.network, token.address, pay_to)
    data = base.model_dump(mode="json")
    data["streaming"]["max_unconfirmed_per_payer"] = args.max_unconfirmed_per_payer
    data["streaming"]["max_unconfirmed_total"] = args.max_unconfirmed_total
    return data


def _config(folder: Path, redis_url: str, proxy_url: str, upstream_url: str, table: PriceTable) -> Path:
    providers = "\n".join(
        f'[providers.{p}]\nbase_url = "{upstream_url}/v1"' for p in sorted({m.provider for m in table.models})
    )
    path = folder / "payrouter.toml"
    path.write_text(
        f'price_table = "prices.toml"\nredis_url = "{redis_url}"\nnamespace = "{NAMESPACE}"\n'
        "reconcile_interval = 5\n"
        f'[facilitator]\nmode = "local"\nrpc_url = "{proxy_url}"\ngas_key_env = "{GAS_ENV}"\nreceipt_timeout = 3\n'
        f"{providers}\n"
    )
    return path


def _commit() -> str:
    """The commit the service ran from (``+dirty`` when payrouter/ or pricing/ had local changes)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "payrouter", "pricing", "wallets"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout
    except OSError:
        return "unknown"
    return head.strip() + ("+dirty" if dirty.strip() else "")


def _phase(phases: dict[str, float], name: str, since: float) -> float:
    now = time.monotonic()
    phases[name] = round(now - since, 2)
    return now


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("--agents", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--block-time", type=int, default=1)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--max-unconfirmed-per-payer", default="0.003", help="USD (the example table: 1.00)")
    parser.add_argument("--max-unconfirmed-total", default="0.015", help="USD (the example table: 100.00)")
    parser.add_argument("--reconcile-limit", type=float, default=45.0, help="seconds of reconcile passes at most")
    parser.add_argument("--drain-limit", type=float, default=30.0, help="seconds for payments in flight at the end")
    parser.add_argument("--keep-logs", type=Path, default=None, help="copy the servers' and Redis' logs here")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else secrets.randbelow(10**6)

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)

    phases: dict[str, float] = {}
    t0 = mark = time.monotonic()
    procs = Processes()
    folder = Path(tempfile.mkdtemp(prefix="payrouter-chaos-"))
    redis_dir = folder / "redis"
    redis_dir.mkdir()
    chain: DevChain | None = None
    pool = ThreadPoolExecutor(max_workers=max(4, args.agents // 6 + 2), thread_name_prefix="relayer")
    try:
        # 1. everything in its own process
        chain = DevChain.start(block_time=args.block_time)
        token = chain.deploy_token()
        operator = LocalSigner.generate()
        agents = [LocalSigner.generate() for _ in range(args.agents)]
        attackers = {i for i in range(args.agents) if i % 6 == 5}
        relayers = {i: chain.new_account() for i in attackers}
        gas = chain.new_account()
        _mint_all(chain, token, [a.address for a in agents], AGENT_FUNDS)

        table_data = _table_for(chain, token, operator.address, args)
        (folder / "prices.toml").write_text(price_table_toml(table_data))
        table = load_price_table(folder / "prices.toml")
        per_payer_limit, total_limit = table.unconfirmed_limits()

        redis_port = free_port()
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        _wait_redis(redis_url, procs.start("redis", _redis_argv(redis_port, redis_dir)))

        up_port = free_port()
        upstream_url = f"http://127.0.0.1:{up_port}"
        procs.start(
            "upstream",
            [
                sys.executable,
                "-c",
                "import sys; from bench.paid_path import _serve_upstream; _serve_upstream(int(sys.argv[1]))",
                str(up_port),
            ],
            cwd=REPO,
            log=folder / "upstream.log",
        )
        proxy = procs.start(
            "rpc-proxy",
            [sys.executable, "-m", "payrouter.sandbox.rpc_faults", "--upstream", chain.rpc_url, "--port", "0"],
            stdout_pipe=True,
            cwd=REPO,
        )
        proxy_url = str(_read_ready_line(proxy)["url"])

        config = _config(folder, redis_url, proxy_url, upstream_url, table)
        env = {**os.environ, GAS_ENV: gas.unsafe_export_private_key(), "PYTHONFAULTHANDLER": "1"}
        urls = []
        for name in ("payrouter-a", "payrouter-b"):
            port = free_port()
            procs.start(
                name,
                [str(CLI), "serve", "--config", str(config), "--port", str(port)],
                env=env,
                log=folder / f"{name}.log",
            )
            urls.append(f"http://127.0.0.1:{port}")
        for name, url in zip(("payrouter-a", "payrouter-b"), urls, strict=True):
            _wait_healthy(f"{url}/healthz", procs, name)
        for _ in range(100):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{upstream_url}/_stats", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        httpx.post(
            f"{upstream_url}/_control", json={"delay_ms": 300, "chunk_delay_ms": 20}, timeout=5
        ).raise_for_status()
        mark = _phase(phases, "setup", mark)

        # 2-3. the agents, the faults and the Redis kills
        rng = random.Random(seed)
        started = time.monotonic()
        run = Run(urls, token, agents, relayers, started + args.seconds, args.seconds, seed, pool)
        chaos = Chaos(proxy_url, redis_url, redis_port, redis_dir, procs, rng, started)
        load_info = asyncio.run(_load(run, chaos, attackers, args.seconds, args.drain_limit))
        load_seconds = args.seconds
        mark = _phase(phases, "load", started)
        phases["drain"] = round(load_info["drain_s"], 2)

        # 4. proxy on pass (the driver ended there), reconcile until only legitimate waits remain
        httpx.post(f"{proxy_url}/_faults", json={"mode": "pass"}, timeout=5).raise_for_status()
        reconcile_passes: list[dict[str, Any]] = []
        deadline = time.monotonic() + args.reconcile_limit
        while True:
            code, out, err = _ledger(["reconcile", "--config", str(config), "--json"], env)
            line = out.strip().splitlines()[-1] if out.strip() else ""
            try:
                passed: dict[str, Any] = json.loads(line) if line else {}
            except ValueError:
                passed = {}
            passed["exit"] = code
            if code == 2:
                passed["stderr"] = err.strip()[-500:]
            reconcile_passes.append(passed)
            _, open_records, _ = asyncio.run(_journal_state(redis_url))
            stuck = [r for r in open_records if not _legitimately_waiting(r, chain)]
            if not stuck or time.monotonic() > deadline:
                break
            time.sleep(3)
        mark = _phase(phases, "reconcile", mark)

        code, out, err = _ledger(["audit", "--config", str(config), "--json"], env)
        try:
            audit: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            audit = {"equal": False, "error": err.strip()[-500:], "exit": code}
        audit["exit"] = code
        mark = _phase(phases, "audit", mark)

        # 5. the checks
        records, open_records, exposure = asyncio.run(_journal_state(redis_url))
        by_id = {r.id: r for r in records}
        states = Counter(r.state for r in records)
        settled = [r for r in records if r.state == State.SETTLED]
        transfers = _logs(chain, token.address, [TRANSFER_TOPIC, None, _topic(operator.address)])
        chain_sum = sum(int(_hex(t["data"]), 16) for t in transfers)
        journal_sum = sum(r.charged for r in settled)
        used = _logs(chain, token.address, [AUTHORIZATION_USED_TOPIC])
        charged_ids = {f"exact:0x{_hex(u['topics'][1])[-40:]}:{_hex(u['topics'][2])}" for u in used}

        payments = {p.id: p for p in run.payments}
        served = {p.id for p in run.payments if p.served}
        debt_states = {State.OWED, State.UNPAID}
        served_states = Counter(by_id[i].state if i in by_id else "no record" for i in served)
        served_unbilled = sorted(
            i for i in served if i not in by_id or by_id[i].state not in ({State.SETTLED} | debt_states)
        )
        no_answer = asyncio.run(_missing_answers(redis_url, [r.id for r in settled]))
        charged_unserved = sorted(i for i in charged_ids if i in payments and i not in served)
        unknown_charged = sorted(i for i in charged_ids if i not in payments)
        to_present = sorted(set(no_answer) | set(charged_unserved))
        presentable = [payments[i] for i in to_present if i in payments]
        failures = asyncio.run(_present_again(urls, presentable))
        failures += [{"id": i, "got": "no agent payment to present"} for i in to_present if i not in payments]
        failures += [{"id": i, "got": "charged on chain, no agent made this payment"} for i in unknown_charged]
        mark = _phase(phases, "checks", mark)

        stuck = [r for r in open_records if not _legitimately_waiting(r, chain)]
        waiting = [r for r in open_records if _legitimately_waiting(r, chain)]
        per_payer_seen = max(chaos.per_payer_high.values(), default=0)
        servers_alive = {name: procs.alive(name) for name in ("payrouter-a", "payrouter-b")}
        checks = {
            "chain_equals_journal": len(transfers) == len(settled)
            and chain_sum == journal_sum
            and bool(audit.get("equal")),
            "no_answer_unbilled": not served_unbilled,
            "no_charge_without_answer": not failures,
            "exposure_within_limits": exposure[1] <= total_limit
            and chaos.total_high_sampled <= total_limit
            and per_payer_seen <= per_payer_limit,
            "no_stuck_open_records": not stuck,
            "servers_alive": all(servers_alive.values()),
            "agents_did_not_crash": not load_info["agent_crashes"],
        }
        outcomes = Counter(p.outcome.split(" ")[0] for p in run.payments)
        attempted = len(run.payments)
        report: dict[str, Any] = {
            "service_commit": _commit(),
            "seed": seed,
            "agents": args.agents,
            "attackers": len(attackers),
            "seconds": args.seconds,
            "block_time": args.block_time,
            "ok": all(checks.values()),
            "checks": checks,
            "money": {
                "chain_transfers": {"count": len(transfers), "sum": chain_sum},
                "journal_settled": {"count": len(settled), "sum": journal_sum},
                "audit": {
                    k: audit.get(k) for k in ("equal", "chain", "journal", "matched", "differences", "exit", "error")
                },
            },
            "answers": {
                "payments_signed": attempted,
                "served": len(served),
                "served_streams": sum(1 for i in served if payments[i].stream),
                "served_by_record_state": dict(served_states),
                "served_without_settled_or_owed_record": served_unbilled[:20],
                "settled": len(settled),
                "owed_or_unpaid": states[State.OWED] + states[State.UNPAID],
                "settled_not_served_first_time": len([r for r in settled if r.id not in served]),
            },
            "charged_without_answer": {
                "settled_without_kept_answer": len(no_answer),
                "charged_on_chain_not_served": len(charged_unserved),
                "presented_again": len(presentable),
                "still_failing": len(failures),
                "failures": failures[:20],
            },
            "exposure": {
                "now": exposure[0],
                "highest_reserved": exposure[1],
                "highest_total_sampled": chaos.total_high_sampled,
                "highest_per_payer_sampled": per_payer_seen,
                "limit_total": total_limit,
                "limit_per_payer": per_payer_limit,
                "samples": chaos.samples,
            },
            "records_by_state": dict(sorted(states.items())),
            "open_after_reconcile": {
                "legitimately_waiting": dict(Counter(r.state for r in waiting)),
                "stuck": [
                    {"id": r.id, "state": r.state, "reason": r.reason, "tx": r.tx, "delivered": r.delivered}
                    for r in stuck[:20]
                ],
            },
            "agent_outcomes": dict(outcomes.most_common()),
            "unanswered_payments": _unanswered(run.payments, by_id, started),
            "odd_events": run.odd[:60],
            "requests": dict(sorted(run.stats.items())),
            "rates": {
                "http_requests_per_s": round(run.requests / load_seconds, 1),
                "payments_per_s": round(attempted / load_seconds, 1),
                "answers_per_s": round(len(served) / load_seconds, 1),
            },
            "reconcile_passes": reconcile_passes,
            "chaos_timeline": chaos.timeline,
            "redis_down_s": [round(s, 2) for s in chaos.redis_down_s],
            "drain": {k: v for k, v in load_info.items() if k != "drain_s"},
            "server_logs": _log_summary(procs),
            "servers_alive": servers_alive,
            "phases_s": phases,
        }
        _print_report(report)
        print(json.dumps(report, separators=(",", ":"), default=str))
        return 0 if report["ok"] else 1
    finally:
        t_clean = time.monotonic()
        pool.shutdown(wait=False, cancel_futures=True)
        if args.keep_logs is not None:
            with contextlib.suppress(OSError):
                args.keep_logs.mkdir(parents=True, exist_ok=True)
                for path in [*folder.glob("*.log"), redis_dir / "redis.log"]:
                    if path.exists():
                        shutil.copy(path, args.keep_logs / path.name)
        procs.stop_all()
        if chain is not None:
            chain.stop()
        shutil.rmtree(folder, ignore_errors=True)
        print(f"cleanup {time.monotonic() - t_clean:.1f} s; total {time.monotonic() - t0:.1f} s", flush=True)


def _print_report(r: dict[str, Any]) -> None:
    def ok(name: str) -> str:
        return "OK" if r["checks"][name] else "MISMATCH" if name == "chain_equals_journal" else "FAIL"

    out: Callable[[str], None] = print
    m = r["money"]
    out(
        f"chaos run ({r['service_commit']}): seed {r['seed']}, {r['agents']} agents ({r['attackers']} attackers), {r['seconds']:g} s, "
        f"block time {r['block_time']} s"
    )
    out("timeline: " + "; ".join(r["chaos_timeline"]))
    out(
        f"[{ok('chain_equals_journal')}] chain transfers to pay_to: {m['chain_transfers']['count']} / "
        f"{m['chain_transfers']['sum']} units; settled records: {m['journal_settled']['count']} / "
        f"{m['journal_settled']['sum']} units; audit equal={m['audit'].get('equal')} matched={m['audit'].get('matched')}"
    )
    for d in m["audit"].get("differences") or []:
        out(f"    difference: {d}")
    a = r["answers"]
    out(
        f"[{ok('no_answer_unbilled')}] answers served: {a['served']} ({a['served_streams']} streams) of "
        f"{a['payments_signed']} payments; settled {a['settled']}, owed/unpaid {a['owed_or_unpaid']}; served answers' "
        f"records: {a['served_by_record_state']}"
    )
    for i in a["served_without_settled_or_owed_record"]:
        out(f"    served without a settled/owed record: {i}")
    c = r["charged_without_answer"]
    out(
        f"[{ok('no_charge_without_answer')}] charged without a retrievable answer: {c['still_failing']} "
        f"(presented again {c['presented_again']}: settled without kept answer {c['settled_without_kept_answer']}, "
        f"charged on chain but not served {c['charged_on_chain_not_served']})"
    )
    for f in c["failures"]:
        out(f"    still failing: {f}")
    e = r["exposure"]
    out(
        f"[{ok('exposure_within_limits')}] unconfirmed stream exposure: highest reserved {e['highest_reserved']} "
        f"(sampled {e['highest_total_sampled']}) / limit {e['limit_total']}; per payer highest sampled "
        f"{e['highest_per_payer_sampled']} / limit {e['limit_per_payer']} ({e['samples']} samples)"
    )
    o = r["open_after_reconcile"]
    out(
        f"[{ok('no_stuck_open_records')}] open after reconcile: waiting {o['legitimately_waiting']}, stuck {o['stuck']}"
    )
    out(f"[{ok('servers_alive')}] servers alive: {r['servers_alive']}")
    out(f"records by state: {r['records_by_state']}")
    out(f"agent outcomes: {r['agent_outcomes']}")
    for outcome, group in r["unanswered_payments"].items():
        out(f"    unanswered {outcome}: {group['count']}, e.g.")
        for example in group["examples"]:
            out(f"        {example}")
    if r["odd_events"]:
        out("odd events: " + "; ".join(r["odd_events"]))
    out(f"requests: {r['requests']}")
    out(f"rates: {r['rates']}")
    out(f"reconcile passes: {r['reconcile_passes']}")
    out(f"drain: {r['drain']}; redis down: {r['redis_down_s']} s")
    for name, logs in r["server_logs"].items():
        out(f"{name} log: {logs['counts']}")
        for shape, n in logs["errors"]:
            out(f"    {n} x {shape}")
    out(f"phases (s): {r['phases_s']}")
    out("RESULT: " + ("OK" if r["ok"] else "FAIL: " + ", ".join(k for k, v in r["checks"].items() if not v)))


if __name__ == "__main__":
    sys.exit(main())
