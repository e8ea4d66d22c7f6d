"""``payrouter ledger reconcile``: one pass over the open records, from the chain's truth."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from payrouter.devchain import DevChain, DevToken
from payrouter.journal import RedisJournal, State, now_ms
from tests.redis_keys import delete_namespace, run_token
from tests.service_config import GAS_KEY_ENV, example_table, write_config
from wallets import LocalSigner

from .seed import BASE_MS, MINUTE_MS, authorize, record, submit, write

pytestmark = pytest.mark.chain

REDIS_URL = "redis://127.0.0.1:6379/0"
CLI = Path(sys.executable).parent / "payrouter"


def test_reconcile_settles_the_mined_releases_the_expired_and_leaves_the_live(
    chain: DevChain, token: DevToken, tmp_path: Path
) -> None:
    namespace = f"payrouter-test-reconcile-{run_token()}"
    pay_to, payer = LocalSigner.generate().address, LocalSigner.generate()
    token.mint(payer.address, 100_000)
    # its transfer was mined, but the worker lost the receipt: pending with its hash
    mined = submit(token, chain.new_account(), authorize(token, payer, pay_to, 5_000))
    # never submitted, and its authorization has expired
    expired = authorize(token, payer, pay_to, 6_000, valid_before=int(time.time()) - 600)
    # never submitted, still valid: its worker may still be serving it
    live = authorize(token, payer, pay_to, 7_000)
    records = {
        "mined": record(chain, token, mined, "gpt-4o", BASE_MS),
        "expired": record(chain, token, expired, "gpt-4o", BASE_MS + MINUTE_MS),
        # opened now: a record opened long ago is closed whatever its validBefore (a day at most)
        "live": record(chain, token, live, "gpt-4o", now_ms()),
    }

    async def seed() -> None:
        journal = RedisJournal(Redis.from_url(REDIS_URL), namespace)
        try:
            await write(journal, records["mined"], State.PENDING, tx=mined.tx, reason="settlement_pending")
            await write(journal, records["expired"], State.CLAIMED)
            await write(journal, records["live"], State.CLAIMED)
        finally:
            await journal.close()

    async def stored() -> dict[str, tuple[str, int, str, str]]:
        journal = RedisJournal(Redis.from_url(REDIS_URL), namespace)
        try:
            out = {}
            for name, r in records.items():
                got = await journal.get(r.id)
                assert got is not None
                out[name] = (got.state, got.charged, got.tx, got.reason)
            return out
        finally:
            await journal.close()

    config = write_config(
        tmp_path, example_table(chain.network, token.address, pay_to), REDIS_URL, namespace, chain.rpc_url
    )
    env = {**os.environ, GAS_KEY_ENV: chain.new_account().unsafe_export_private_key()}
    try:
        asyncio.run(seed())
        done = subprocess.run(
            [str(CLI), "ledger", "reconcile", "--config", str(config), "--json", "--wait", "5"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {
            "examined": 3,
            "errors": 0,
            "skipped": False,
            "ended": {"claimed": 1, "released": 1, "settled": 1},
        }
        assert asyncio.run(stored()) == {
            "mined": (State.SETTLED, 5_000, mined.tx, ""),
            "expired": (State.RELEASED, 0, "", "expired_unused"),
            "live": (State.CLAIMED, 0, "", ""),
        }
        assert env[GAS_KEY_ENV][2:] not in done.stdout + done.stderr
    finally:
        delete_namespace(REDIS_URL, namespace)
