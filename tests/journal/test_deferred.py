"""Writes deferred while Redis is down land in order once it is back (a private redis-server,
killed and restarted by PID)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from payrouter.journal import DeferredWrites, RedisJournal, State, now_ms
from payrouter.store.redis import connect
from tests.journal.test_journal import _record
from tests.private_redis import PrivateRedis


async def test_deferred_writes_to_one_record_land_in_order(tmp_path: Path) -> None:
    private_redis = PrivateRedis(tmp_path, appendonly=True)  # the record must survive the kill
    private_redis.start()
    journal = RedisJournal(connect(private_redis.url), "deferred")
    deferred = DeferredWrites(journal, horizon=30)
    try:
        record = (await journal.open(_record())).record
        settling = record.moved(State.SETTLING)
        assert (await journal.advance(settling, [State.CLAIMED]))[0]
        private_redis.kill()
        settled = settling.moved(State.SETTLED, tx="0xabc", settled_at=now_ms(), charged=record.amount)
        # the settlement, then the answer that needs the settled state: the second must not
        # be tried (and refused) before the first has landed
        deferred.schedule(settled, [State.SETTLING], None, 60)
        deferred.schedule(settled.moved(State.SETTLED, delivered="complete"), [State.SETTLED], b"answer", 60)
        assert deferred.holds(record.id) and deferred.pending == 1
        await asyncio.sleep(0.3)  # both retry while Redis is down
        private_redis.start()
        await deferred.drain(20)
        stored = await journal.get(record.id)
        assert stored is not None and stored.state == State.SETTLED and stored.delivered == "complete"
        assert await journal.answer(record.id) == b"answer"
        assert not deferred.holds(record.id)
    finally:
        await journal.close()
        private_redis.kill()
