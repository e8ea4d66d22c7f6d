"""A voucher's reservation is given back even when Redis is away at the time: the release is
retried in the background until the store takes it (a real redis-server, killed and started
again on its AOF file)."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path
from typing import Any, cast

from payrouter.channels.redis import RedisChannelStore
from payrouter.channels.settler import GasWalletSettler
from payrouter.journal import MemoryJournal
from payrouter.sandbox.dev import EXAMPLE_TABLE
from payrouter.store.redis import connect
from payrouter.x402.schemes.batch import BatchScheme
from pricing import load_price_table
from tests.private_redis import PrivateRedis
from wallets import LocalSigner


async def test_a_release_the_store_missed_is_retried_until_it_lands(tmp_path: Path) -> None:
    server = PrivateRedis(tmp_path, appendonly=True)  # every write on disk: a kill loses nothing
    server.start()
    client = connect(server.url)
    store = RedisChannelStore(client, "release-test")
    table = load_price_table(EXAMPLE_TABLE).on_chain("eip155:31337", "0x" + "11" * 20, "0x" + "22" * 20)
    # the contract is never reached by a release
    scheme = BatchScheme(table, store, GasWalletSettler(cast(Any, None), LocalSigner.generate()), MemoryJournal())
    cid = "0x" + secrets.token_hex(32)
    try:
        await store.upsert_onchain(
            cid,
            config="{}",
            payer="0x" + "33" * 20,
            balance=10_000,
            total_claimed=0,
            withdraw_requested_at=0,
            refund_nonce=0,
            synced_at_ms=1,
        )
        token = secrets.token_hex(16)
        reserved = await store.reserve(cid, amount=500, signed_max=500, signature="0x", token=token, ttl_ms=600_000)
        assert reserved.kind == "ok"

        server.kill()  # the call failed, and the store is gone as it gives the channel back
        await scheme._release(cid, token)
        assert len(scheme._releasing) == 1  # retrying in the background

        await asyncio.sleep(0.7)  # a first retry finds it still away
        server.start()
        deadline = time.monotonic() + 10
        while scheme._releasing:
            assert time.monotonic() < deadline, "the release was not retried"
            await asyncio.sleep(0.05)
        state = await store.get(cid)
        assert state is not None and state.pending == "" and state.charged == 0
        again = await store.reserve(cid, amount=500, signed_max=500, signature="0x", token="next", ttl_ms=600_000)
        assert again.kind == "ok"  # the channel is free, well before its reservation would lapse
    finally:
        for task in list(scheme._releasing):
            task.cancel()
        await store.close()
        server.kill()
