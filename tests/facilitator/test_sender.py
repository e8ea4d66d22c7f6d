"""GasSender on a real anvil: concurrent sends share one nonce sequence, and lost replies are in doubt."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from eth_typing import HexStr

from payrouter.chain import ChainClient
from payrouter.devchain import DevChain
from payrouter.facilitator.sender import GasSender
from payrouter.sandbox.rpc_faults import RpcFaultProxy
from payrouter.store import MemoryStore, keys
from payrouter.x402.errors import Reason, SettlementInDoubt
from wallets import LocalSigner

SINK = "0x000000000000000000000000000000000000dEaD"


def _status(chain: DevChain, tx_hash: str) -> int:
    return int(chain.w3.eth.wait_for_transaction_receipt(HexStr(tx_hash), timeout=10)["status"])


def _nonce(chain: DevChain, tx_hash: str) -> int:
    return int(chain.w3.eth.get_transaction(HexStr(tx_hash))["nonce"])


@pytest.fixture
async def client(chain: DevChain) -> AsyncIterator[ChainClient]:
    rpc = ChainClient(chain.rpc_url)
    yield rpc
    await rpc.close()


async def test_concurrent_sends_take_consecutive_nonces(chain: DevChain, client: ChainClient) -> None:
    gas = chain.new_account()
    store = MemoryStore()
    # two senders over one store, as two workers would be
    senders = [GasSender(client, gas, store, chain.chain_id) for _ in range(2)]
    results = await asyncio.gather(*(senders[i % 2].send(SINK, b"", 21_000) for i in range(12)))
    # anvil mines on arrival, but the receipt in the same batch may come a moment late
    assert all(receipt is None or receipt.status == 1 for _, receipt in results)
    assert all(_status(chain, h) == 1 for h, _ in results)
    nonces = sorted(_nonce(chain, h) for h, _ in results)
    assert nonces == list(range(12))
    assert await store.get(keys.gas_nonce(chain.chain_id, gas.address)) == b"12"
    assert gas.address in repr(senders[0]) and "key" not in repr(senders[0]).lower()


async def test_a_wallet_used_elsewhere_is_re_read(chain: DevChain, client: ChainClient) -> None:
    gas = chain.new_account()
    sender = GasSender(client, gas, MemoryStore(), chain.chain_id)
    await sender.send(SINK, b"", 21_000)
    chain.send(gas, {"to": SINK, "gas": 21_000})  # the cached nonce is stale now
    tx_hash, _ = await sender.send(SINK, b"\x01", 30_000)
    assert _status(chain, tx_hash) == 1
    assert _nonce(chain, tx_hash) == 2


async def test_a_lost_reply_is_in_doubt_with_the_hash_and_the_nonce_is_re_read(chain: DevChain) -> None:
    gas: LocalSigner = chain.new_account()
    async with RpcFaultProxy(chain.rpc_url) as proxy:
        rpc = ChainClient(proxy.url)
        try:
            sender = GasSender(rpc, gas, MemoryStore(), chain.chain_id)
            await sender.fees()  # cached: the send below is the only request that is lost
            proxy.set_mode("lose_send")
            with pytest.raises(SettlementInDoubt) as info:
                await sender.send(SINK, b"", 21_000)
            assert info.value.reason == Reason.SETTLEMENT_PENDING
            lost = info.value.transaction
            assert _status(chain, lost) == 1  # it was taken
            proxy.set_mode("pass")
            tx_hash, _ = await sender.send(SINK, b"", 21_000)
            assert _nonce(chain, tx_hash) == 1
        finally:
            await rpc.close()


async def test_nothing_sent_when_the_node_is_down(chain: DevChain) -> None:
    gas = chain.new_account()
    async with RpcFaultProxy(chain.rpc_url, mode="down") as proxy:
        rpc = ChainClient(proxy.url)
        try:
            with pytest.raises(Exception) as info:
                await GasSender(rpc, gas, MemoryStore(), chain.chain_id).send(SINK, b"", 21_000)
            assert not isinstance(info.value, SettlementInDoubt)
        finally:
            await rpc.close()
    assert chain.w3.eth.get_transaction_count(gas.address) == 0
