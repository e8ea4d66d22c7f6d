"""The JSON-RPC fault proxy, proven with real traffic against anvil in every mode."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from eth_utils.crypto import keccak

from payrouter.chain import ChainClient, ChainError
from payrouter.devchain import DevChain, DevToken, make_web3
from payrouter.sandbox.rpc_faults import RpcFaultProxy, fault_proxy_in_thread
from wallets import LocalSigner


@pytest.fixture
def proxy(chain: DevChain) -> Iterator[RpcFaultProxy]:
    with fault_proxy_in_thread(chain.rpc_url) as p:
        yield p


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


def _call(method: str, params: list[Any], id_: int | str = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id_, "method": method, "params": params}


def _raw_transfer(chain: DevChain, wei: int = 12_345) -> tuple[bytes, str, str]:
    """A signed ETH transfer from a fresh account: ``(raw, tx hash, recipient)``."""
    sender = chain.new_account()
    recipient = LocalSigner.generate().address
    base_fee = chain.w3.eth.get_block("latest").get("baseFeePerGas", 0)
    raw = sender.sign_transaction(
        {
            "chainId": chain.chain_id,
            "nonce": 0,
            "gas": 21_000,
            "maxFeePerGas": 2 * base_fee + 10**9,
            "maxPriorityFeePerGas": 10**9,
            "to": recipient,
            "value": wei,
        }
    )
    return raw, "0x" + keccak(raw).hex(), recipient


def _mined(chain: DevChain, tx_hash: str) -> dict[str, Any]:
    """The receipt straight from anvil (not through the proxy), waiting briefly for it."""
    receipt = chain.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=10, poll_latency=0.01)  # type: ignore[arg-type]
    assert receipt["status"] == 1
    return dict(receipt)


def test_pass_forwards_calls_and_batches_unchanged(
    proxy: RpcFaultProxy, chain: DevChain, token: DevToken, http: httpx.Client
) -> None:
    holder = LocalSigner.generate().address
    token.mint(holder, 4_321)
    w3 = make_web3(proxy.url)
    assert w3.eth.chain_id == chain.chain_id
    contract = w3.eth.contract(address=token.address, abi=token.contract.abi)
    assert contract.functions.balanceOf(holder).call() == 4_321 == token.balance_of(holder)
    batch = [_call("eth_chainId", [], 7), _call("eth_blockNumber", [], 8)]
    through, direct = http.post(proxy.url, json=batch), http.post(chain.rpc_url, json=batch)
    assert through.status_code == 200
    assert [r["id"] for r in through.json()] == [7, 8]
    assert through.json()[0] == direct.json()[0]
    stats = proxy.stats()
    assert stats["mode"] == "pass" and stats["requests"] >= 3 and stats["calls"] >= 4
    assert stats["dropped"] == stats["lost"] == stats["receipts_hidden"] == 0


def test_down_fails_at_the_transport_level_and_recovers_over_http(proxy: RpcFaultProxy, http: httpx.Client) -> None:
    assert http.post(proxy.url, json=_call("eth_chainId", [])).status_code == 200  # a kept-alive connection
    switched = http.post(f"{proxy.url}/_faults", json={"mode": "down", "reset": True})
    assert switched.json()["mode"] == "down"
    for _ in range(2):  # on the kept-alive connection, then on a new one
        with pytest.raises(httpx.TransportError):
            http.post(proxy.url, json=_call("eth_chainId", []))
    with httpx.Client(timeout=10) as fresh, pytest.raises(httpx.TransportError):
        fresh.post(proxy.url, json=[_call("eth_chainId", []), _call("eth_blockNumber", [], 2)])
    stats = http.get(f"{proxy.url}/_faults").json()  # the control endpoint still answers
    assert stats["mode"] == "down" and stats["dropped"] == stats["requests"] == 3
    assert http.post(f"{proxy.url}/_faults", json={"mode": "pass"}).json()["mode"] == "pass"
    assert http.post(proxy.url, json=_call("eth_chainId", [])).json()["result"] == hex(31337)


async def test_down_is_a_chain_error_for_payrouters_client(proxy: RpcFaultProxy) -> None:
    client = ChainClient(proxy.url, timeout=5)
    try:
        assert await client.chain_id() == 31337
        proxy.set_mode("down")
        with pytest.raises(ChainError, match="RPC request failed"):
            await client.chain_id()
        proxy.set_mode("pass")
        assert await client.chain_id() == 31337
    finally:
        await client.close()


def test_lose_send_takes_the_transaction_but_loses_the_answer(
    proxy: RpcFaultProxy, chain: DevChain, http: httpx.Client
) -> None:
    raw, tx_hash, recipient = _raw_transfer(chain)
    proxy.set_mode("lose_send")
    response = http.post(proxy.url, json=_call("eth_sendRawTransaction", ["0x" + raw.hex()]))
    assert response.status_code == 503
    with pytest.raises(ValueError):
        response.json()  # no JSON-RPC answer at all
    assert _mined(chain, tx_hash)["transactionHash"].hex().removeprefix("0x") == tx_hash[2:]
    assert chain.w3.eth.get_balance(recipient) == 12_345  # type: ignore[arg-type]
    # other calls pass in this mode
    assert http.post(proxy.url, json=_call("eth_chainId", [])).json()["result"] == hex(chain.chain_id)
    stats = proxy.stats()
    assert stats["send_raw_forwarded"] == 1 and stats["lost"] == 1


async def test_lose_send_hides_the_batch_that_payrouter_sends(proxy: RpcFaultProxy, chain: DevChain) -> None:
    raw, tx_hash, recipient = _raw_transfer(chain, wei=777)
    proxy.set_mode("lose_send")
    client = ChainClient(proxy.url, timeout=5)
    try:
        with pytest.raises(ChainError, match="503"):
            await client.send_and_receipt(raw)  # [eth_sendRawTransaction, eth_getTransactionReceipt]
    finally:
        await client.close()
    _mined(chain, tx_hash)
    assert chain.w3.eth.get_balance(recipient) == 777  # type: ignore[arg-type]
    assert proxy.stats()["send_raw_forwarded"] == 1 and proxy.stats()["lost"] == 1


async def test_hide_receipt_nulls_receipts_only(proxy: RpcFaultProxy, chain: DevChain, http: httpx.Client) -> None:
    raw, tx_hash, _ = _raw_transfer(chain)
    proxy.set_mode("hide_receipt")
    client = ChainClient(proxy.url, timeout=5)
    try:
        sent_hash, receipt = await client.send_and_receipt(raw)
        assert sent_hash == tx_hash and receipt is None  # mined, but the batch's receipt is hidden
        assert await client.wait_for_receipt(tx_hash, timeout=0.1) is None
    finally:
        await client.close()
    mined = _mined(chain, tx_hash)  # present straight from anvil
    batch = [_call("eth_getTransactionReceipt", [tx_hash], 1), _call("eth_getTransactionByHash", [tx_hash], 2)]
    replies = {r["id"]: r for r in http.post(proxy.url, json=batch).json()}
    assert replies[1]["result"] is None
    assert int(replies[2]["result"]["blockNumber"], 16) == mined["blockNumber"]
    single = http.post(proxy.url, json=_call("eth_getTransactionReceipt", [tx_hash], "r")).json()
    assert single == {"jsonrpc": "2.0", "id": "r", "result": None}
    assert proxy.stats()["receipts_hidden"] >= 4
    proxy.set_mode("pass")
    again = http.post(proxy.url, json=_call("eth_getTransactionReceipt", [tx_hash])).json()["result"]
    assert int(again["blockNumber"], 16) == mined["blockNumber"]


def test_delay_applies_to_every_forwarded_request(proxy: RpcFaultProxy, http: httpx.Client) -> None:
    proxy.set_mode("pass", delay_ms=150)
    started = time.monotonic()
    assert http.post(proxy.url, json=_call("eth_chainId", [])).status_code == 200
    assert time.monotonic() - started >= 0.15
    assert http.post(f"{proxy.url}/_faults", json={"delay_ms": 0}).json()["delay_ms"] == 0
    started = time.monotonic()
    http.post(proxy.url, json=_call("eth_chainId", []))
    assert time.monotonic() - started < 0.15


def test_unknown_modes_are_refused(proxy: RpcFaultProxy, http: httpx.Client) -> None:
    with pytest.raises(ValueError, match="unknown mode"):
        proxy.set_mode("flaky")
    response = http.post(f"{proxy.url}/_faults", json={"mode": "flaky"})
    assert response.status_code == 400 and "unknown mode" in response.json()["error"]
    assert http.post(f"{proxy.url}/_faults", json={"delay_ms": -1}).status_code == 400
    assert proxy.mode == "pass" and proxy.delay_ms == 0


async def test_runs_on_the_callers_event_loop(chain: DevChain) -> None:
    async with RpcFaultProxy(chain.rpc_url, mode="hide_receipt") as proxy:
        client = ChainClient(proxy.url, timeout=5)
        try:
            assert await client.chain_id() == chain.chain_id
            assert proxy.stats()["requests"] == 1
        finally:
            await client.close()


def _ready_line(process: subprocess.Popen[str], timeout: float = 15.0) -> dict[str, Any]:
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    threading.Thread(target=lambda: lines.put(process.stdout.readline()), daemon=True).start()  # type: ignore[union-attr]
    try:
        line = lines.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"no ready line within {timeout} s") from None
    assert line, f"the proxy exited with {process.poll()} before it was ready"
    ready: dict[str, Any] = json.loads(line)
    return ready


def test_runs_as_its_own_process(chain: DevChain, http: httpx.Client) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "payrouter.sandbox.rpc_faults", "--upstream", chain.rpc_url, "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        ready = _ready_line(process)
        assert ready["pid"] == process.pid and ready["mode"] == "pass"
        url = ready["url"]
        assert http.post(url, json=_call("eth_chainId", [])).json()["result"] == hex(chain.chain_id)
        assert http.post(f"{url}/_faults", json={"mode": "down"}).json()["mode"] == "down"
        with pytest.raises(httpx.TransportError):
            http.post(url, json=_call("eth_chainId", []))
        http.post(f"{url}/_faults", json={"mode": "pass"}).raise_for_status()
        assert http.post(url, json=_call("eth_blockNumber", [])).status_code == 200
        stats = http.get(f"{url}/_faults").json()
        assert stats["requests"] == 3 and stats["dropped"] == 1
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0  # a clean exit on SIGTERM
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        assert process.stdout is not None
        process.stdout.close()
