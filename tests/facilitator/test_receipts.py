"""ReceiptWatcher on a real anvil mining a block a second: many waits answered by few requests,
time-outs, and a node that goes away."""

from __future__ import annotations

import asyncio

import pytest

from payrouter.chain import ChainClient, ChainError
from payrouter.devchain import DevChain
from payrouter.facilitator.receipts import ReceiptWatcher
from payrouter.facilitator.sender import GasSender
from payrouter.sandbox.rpc_faults import RpcFaultProxy
from payrouter.store import MemoryStore

SINK = "0x000000000000000000000000000000000000dEaD"


async def test_fifty_waits_are_answered_by_a_few_polls() -> None:
    with DevChain.start(block_time=1) as chain:
        async with RpcFaultProxy(chain.rpc_url) as proxy:
            client = ChainClient(proxy.url)
            try:
                sender = GasSender(client, chain.new_account(), MemoryStore(), chain.chain_id)
                sent = [await sender.send(SINK, bytes([i]), 30_000) for i in range(50)]
                assert all(receipt is None for _, receipt in sent)  # 1 s blocks: none mined on arrival
                watcher = ReceiptWatcher(client)
                proxy.reset_counters()
                receipts = await asyncio.gather(*(watcher.wait(h, 10) for h, _ in sent))
                requests = proxy.stats()["requests"]
                never = await watcher.wait("0x" + "ab" * 32, 0.3)  # a transaction nobody sent
            finally:
                await client.close()
    assert [r.transaction_hash if r else None for r in receipts] == [h for h, _ in sent]
    assert all(r is not None and r.status == 1 and r.gas_wei > 0 for r in receipts)
    # one request per poll for all fifty (each polling alone would take several per block)
    assert requests < 50
    assert never is None


async def test_a_node_that_goes_away_fails_the_waits(chain: DevChain) -> None:
    async with RpcFaultProxy(chain.rpc_url) as proxy:
        client = ChainClient(proxy.url, timeout=2.0)
        try:
            watcher = ReceiptWatcher(client)
            proxy.set_mode("down")
            with pytest.raises(ChainError):
                await watcher.wait("0x" + "cd" * 32, 10)
            proxy.set_mode("pass")
            assert await watcher.wait("0x" + "cd" * 32, 0.2) is None  # the loop runs again
        finally:
            await client.close()
