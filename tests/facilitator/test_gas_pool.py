"""Several gas wallets on a real anvil mining a block a second: 200 concurrent settlements from
two instances sharing Redis all land, spread over the wallets, with no nonce reused or skipped."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
from eth_typing import HexStr
from web3 import Web3

from payrouter.chain import ChainClient
from payrouter.devchain import DevChain, DevToken
from payrouter.facilitator.base import SettleResult
from payrouter.facilitator.local import LocalFacilitator
from payrouter.facilitator.sender import GasPool, GasSender
from payrouter.store import MemoryStore, RedisStore, keys
from payrouter.x402.requirements import Requirements
from payrouter.x402.wire import PaymentPayload, parse_payment
from tests.redis_keys import delete_namespace, run_token
from wallets import LocalSigner, TransferWithAuthorization, new_nonce

REDIS_URL = "redis://127.0.0.1:6379/0"
SETTLEMENTS = 200
WALLETS = 4
PAYERS = 10
AMOUNT = 1_000
SINK = "0x000000000000000000000000000000000000dEaD"


@pytest.fixture(scope="module")
def block_chain() -> Iterator[tuple[DevChain, DevToken, list[LocalSigner]]]:
    """anvil with funded payers, mining a block every second once set up (as a real chain)."""
    with DevChain.start() as chain:
        token = chain.deploy_token()
        payers = [LocalSigner.generate() for _ in range(PAYERS)]
        for payer in payers:
            token.mint(payer.address, 10**12)
        chain.rpc("evm_setAutomine", [False])
        chain.rpc("evm_setIntervalMining", [1])
        yield chain, token, payers


def _payment(payer: LocalSigner, token: DevToken, req: Requirements) -> PaymentPayload:
    auth = TransferWithAuthorization(
        from_=payer.address,
        to=req.pay_to,
        value=AMOUNT,
        valid_after=0,
        valid_before=int(time.time()) + 600,
        nonce=new_nonce(),
    )
    obj: dict[str, Any] = {
        "x402Version": 2,
        "resource": {"url": "http://router.test/v1/chat/completions"},
        "accepted": req.to_v2(),
        "payload": {
            "signature": "0x" + payer.sign_typed_data(token.domain, auth).hex(),
            "authorization": auth.to_wire(),
        },
    }
    return parse_payment(obj, 2)


async def test_200_concurrent_settlements_over_4_wallets_take_contiguous_nonces(
    block_chain: tuple[DevChain, DevToken, list[LocalSigner]],
) -> None:
    chain, token, payers = block_chain
    pay_to = LocalSigner.generate().address
    req = Requirements(
        network=chain.network,
        amount=AMOUNT,
        asset=token.address,
        pay_to=pay_to,
        max_timeout_seconds=600,
        extra={"name": token.domain.name, "version": token.domain.version},
    )
    wallets = [chain.new_account() for _ in range(WALLETS)]
    namespace = f"payrouter-test-gas-pool-{run_token()}"
    stores = [RedisStore(REDIS_URL, namespace) for _ in range(2)]
    # two instances (as two workers) with the same wallets, sharing the nonces through Redis
    instances = [
        LocalFacilitator(ChainClient(chain.rpc_url), wallets[0], store, chain.chain_id, more_gas_wallets=wallets[1:])
        for store in stores
    ]
    try:
        payments = [_payment(payers[i % PAYERS], token, req) for i in range(SETTLEMENTS)]
        results = await asyncio.gather(
            *(instances[i % 2].settle(p, req) for i, p in enumerate(payments)), return_exceptions=True
        )
    finally:
        for instance in instances:
            await instance.close()
        for store in stores:
            await store.close()
        delete_namespace(REDIS_URL, namespace)
    failures = [r for r in results if not isinstance(r, SettleResult)]
    assert failures == []
    txs = [r.transaction for r in results if isinstance(r, SettleResult)]
    assert len(set(txs)) == SETTLEMENTS
    nonces: dict[str, list[int]] = defaultdict(list)
    for tx_hash in txs:
        tx = chain.w3.eth.get_transaction(HexStr(tx_hash))
        nonces[str(tx["from"])].append(int(tx["nonce"]))
        assert chain.w3.eth.get_transaction_receipt(HexStr(tx_hash))["status"] == 1
    assert set(nonces) == {w.address for w in wallets}  # every wallet settled some
    for address, used in nonces.items():
        assert sorted(used) == list(range(len(used))), address  # no nonce reused, none skipped
        assert chain.w3.eth.get_transaction_count(Web3.to_checksum_address(address)) == len(used)
    assert token.balance_of(pay_to) == SETTLEMENTS * AMOUNT
    # the pool spreads the load: no wallet carried most of it
    assert max(len(used) for used in nonces.values()) < SETTLEMENTS // 2


async def test_a_pool_sends_from_a_wallet_nobody_here_is_using(chain: DevChain) -> None:
    client = ChainClient(chain.rpc_url)
    try:
        store = MemoryStore()
        pool = GasPool([GasSender(client, chain.new_account(), store, chain.chain_id) for _ in range(3)])
        # three sends at once: each goes from its own wallet
        sent = await asyncio.gather(*(pool.send(SINK, b"", 21_000) for _ in range(3)))
        senders = Counter(str(chain.w3.eth.get_transaction(HexStr(h))["from"]) for h, _ in sent)
        assert sorted(senders.values()) == [1, 1, 1]
        assert "key" not in repr(pool).lower()
    finally:
        await client.close()
    with pytest.raises(ValueError):
        GasPool([])


async def test_a_wallet_another_instance_holds_is_skipped_and_waited_for(chain: DevChain) -> None:
    client = ChainClient(chain.rpc_url)
    namespace = f"payrouter-test-gas-pool-{run_token()}"
    here, there = RedisStore(REDIS_URL, namespace), RedisStore(REDIS_URL, namespace)
    try:
        wallets = [chain.new_account() for _ in range(2)]
        pool = GasPool([GasSender(client, w, here, chain.chain_id) for w in wallets])
        busy = keys.gas_nonce(chain.chain_id, wallets[0].address)
        # another instance holds wallet 0 (through Store.lock, as instances before GasPool did)
        async with there.lock(busy):
            for _ in range(2):  # whichever wallet the turn starts from, wallet 1 sends
                tx_hash, _ = await pool.send(SINK, b"", 21_000)
                assert chain.w3.eth.get_transaction(HexStr(tx_hash))["from"] == wallets[1].address
            # a lone sender waits for the lock, then sends
            waiting = asyncio.create_task(pool.senders[0].send(SINK, b"", 21_000))
            await asyncio.sleep(0.2)
            assert not waiting.done()
        tx_hash, _ = await asyncio.wait_for(waiting, 10)
        assert chain.w3.eth.get_transaction(HexStr(tx_hash))["from"] == wallets[0].address
    finally:
        await client.close()
        await here.close()
        await there.close()
        delete_namespace(REDIS_URL, namespace)
