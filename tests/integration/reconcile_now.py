"""The reconciler's rules run once, now, over one record of the sandbox's journal."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from payrouter.chain import ChainClient
from payrouter.journal.redis import RedisJournal
from payrouter.reconciler import Resolver
from payrouter.sandbox.dev import Sandbox
from tests.redis_keys import REDIS_URL


def reconcile_now(box: Sandbox, payer: str, nonce: str) -> str:
    """Run the reconciler's rules once over the ``exact`` payment ``(payer, nonce)`` of the
    sandbox's journal, as a background pass in any instance could at this moment (never
    broadcasting); returns the record's state afterwards."""

    async def run() -> str:
        journal = RedisJournal(Redis.from_url(REDIS_URL), box.namespace)
        chain = ChainClient(box.chain.rpc_url)
        try:
            record = await journal.get(f"exact:{payer.lower()}:{nonce}")
            assert record is not None, f"no record of {payer} {nonce}"
            return (await Resolver(journal, chain, None).resolve(record, settle=False)).state  # type: ignore[arg-type]
        finally:
            await journal.close()
            await chain.close()

    return asyncio.run(run())
