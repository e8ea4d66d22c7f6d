"""Run one claimer pass against the sandbox, as a second instance of the service would."""

from __future__ import annotations

import asyncio

from payrouter.chain import ChainClient
from payrouter.channels import open_channel_store
from payrouter.channels.claimer import Claimer, ClaimReport
from payrouter.channels.contract import BatchSettlementContract
from payrouter.channels.settler import GasWalletSettler
from payrouter.facilitator.sender import GasSender
from payrouter.journal.open import open_journal
from payrouter.sandbox.dev import Sandbox
from payrouter.store import RedisStore

from .conftest import REDIS_URL


def claim_pass(box: Sandbox, namespace: str = "", pay_to: str = "") -> ClaimReport:
    """One pass that claims every charged channel of the sandbox and settles to pay_to (or of
    a router beside it with a ``namespace`` and ``pay_to`` of its own)."""
    namespace = namespace or box.namespace
    pay_to = pay_to or box.table.pay_to

    async def run() -> ClaimReport:
        assert box.authorizer is not None
        chain = ChainClient(box.chain.rpc_url)
        store = RedisStore(REDIS_URL, namespace)
        # the gas wallet's nonces are kept where the sandbox's own sender keeps them
        gas_store = RedisStore(REDIS_URL, box.namespace)
        channels = open_channel_store(REDIS_URL, namespace)
        journal = open_journal(REDIS_URL, namespace)
        try:
            sender = GasSender(chain, box.gas_wallet, gas_store, box.chain.chain_id)
            contract = BatchSettlementContract(chain, sender, box.chain.chain_id)
            claimer = Claimer(
                channels,
                GasWalletSettler(contract, box.authorizer),
                journal,
                store,
                pay_to,
                box.table.asset.address,
                0,  # interval 0: claim whatever is charged, every pass
                0,
                chain=chain,
                network=box.table.network,
            )
            report = await claimer.run_once(wait=10)
            assert not report.skipped and not report.errors, report
            return report
        finally:
            await journal.close()
            await channels.close()
            await store.close()
            await gas_store.close()
            await chain.close()

    return asyncio.run(run())
