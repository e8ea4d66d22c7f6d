"""The journal on Redis: one hash per record, indexes beside it, transitions in Lua.

Every key carries the hash tag ``{j}`` (`payrouter.store.keys`), so each transition (record,
indexes, answer) is one atomic script on one slot, on a standalone Redis and on a Cluster alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from payrouter.journal.base import Exposure, Opened
from payrouter.journal.record import EXPOSED_STATES, OPEN_STATES, PaymentRecord, State, now_ms
from payrouter.store import keys
from payrouter.store.base import Written
from payrouter.store.pipe import ScriptPipe
from payrouter.store.redis import RedisClient, redis_call, send_script

__all__ = ["RedisJournal"]

_OPEN = """
local st = redis.call('hget', KEYS[1], 'state')
if st and (st ~= 'released' or redis.call('hget', KEYS[1], 'reason') == 'invalid_exact_evm_transaction_failed') then
  return {'existing', redis.call('hgetall', KEYS[1])}
end
if ARGV[2] == '1' and tonumber(redis.call('hget', KEYS[4], ARGV[7]) or '0') > 0 then return {'debtor'} end
local attempts = 1
local created = ARGV[9]
if st then
  attempts = tonumber(redis.call('hget', KEYS[1], 'attempts') or '1') + 1
  created = redis.call('hget', KEYS[1], 'created_at') or created
else
  redis.call('zadd', KEYS[3], ARGV[9], ARGV[8])
end
redis.call('hset', KEYS[1], unpack(ARGV, 10))
redis.call('hset', KEYS[1], 'state', 'claimed', 'attempts', attempts, 'created_at', created)
redis.call('zadd', KEYS[2], ARGV[1], ARGV[8])
local held = 0
if ARGV[2] == '1' then
  local now = tonumber(ARGV[1])
  local amount = tonumber(ARGV[3])
  local total, mine = 0, 0
  local entries = redis.call('hgetall', KEYS[5])
  for i = 1, #entries, 2 do
    local payer, value, expires = string.match(entries[i + 1], '^([^|]*)|(%d+)|(%d+)$')
    if payer == nil or tonumber(expires) <= now then
      redis.call('hdel', KEYS[5], entries[i])
    else
      total = total + tonumber(value)
      if payer == ARGV[7] then mine = mine + tonumber(value) end
    end
  end
  if mine + amount <= tonumber(ARGV[4]) and total + amount <= tonumber(ARGV[5]) then
    redis.call('hset', KEYS[5], ARGV[8], ARGV[7] .. '|' .. ARGV[3] .. '|' .. ARGV[6])
    if total + amount > tonumber(redis.call('get', KEYS[6]) or '0') then
      redis.call('set', KEYS[6], tostring(total + amount))
    end
  else
    held = 1
  end
end
return {'new', attempts, held, created}
"""

_ADVANCE = """
local cur = redis.call('hmget', KEYS[1], 'state', 'owner')
local st = cur[1]
local new = ARGV[3]
if st then
  if cur[2] ~= ARGV[1] then return {0, st} end
  if st ~= new and not string.find(ARGV[2], ' ' .. st .. ' ', 1, true) then return {0, st} end
else
  redis.call('zadd', KEYS[4], ARGV[7], ARGV[5])
end
redis.call('hset', KEYS[1], unpack(ARGV, 12))
if string.find(' claimed serving settling pending owed ', ' ' .. new .. ' ', 1, true) then
  redis.call('zadd', KEYS[3], ARGV[6], ARGV[5])
else
  redis.call('zrem', KEYS[3], ARGV[5])
end
if new == 'settled' then redis.call('zadd', KEYS[5], ARGV[8], ARGV[5]) end
local was_debt = st == 'owed' or st == 'unpaid'
local is_debt = new == 'owed' or new == 'unpaid'
if is_debt and not was_debt then redis.call('hincrby', KEYS[6], ARGV[4], 1) end
if was_debt and not is_debt then
  if redis.call('hincrby', KEYS[6], ARGV[4], -1) <= 0 then redis.call('hdel', KEYS[6], ARGV[4]) end
end
if not string.find(' claimed serving settling pending ', ' ' .. new .. ' ', 1, true) then
  redis.call('hdel', KEYS[7], ARGV[5])
end
if ARGV[9] == 'keep' then
  redis.call('set', KEYS[2], ARGV[10], 'EX', ARGV[11])
elseif ARGV[9] == 'drop' then
  redis.call('del', KEYS[2])
end
return {1, new}
"""


_DISCARD = """
local cur = redis.call('hmget', KEYS[1], 'state', 'owner', 'attempts')
if (cur[1] ~= 'claimed' and cur[1] ~= 'serving') or cur[2] ~= ARGV[1] or cur[3] ~= '1' then return 0 end
redis.call('del', KEYS[1])
redis.call('zrem', KEYS[2], ARGV[2])
redis.call('zrem', KEYS[3], ARGV[2])
redis.call('hdel', KEYS[4], ARGV[2])
return 1
"""


def _check_state_sets() -> None:
    # The scripts spell the state sets out; keep them in step with record.py.
    assert OPEN_STATES == {"claimed", "serving", "settling", "pending", "owed"}
    assert EXPOSED_STATES == {"claimed", "serving", "settling", "pending"}


_check_state_sets()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(flat: list[Any]) -> dict[str, str]:
    return {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat), 2)}


class RedisJournal:
    """`Journal` on Redis (standalone or Cluster).

    Args:
        redis: a client (shared with the store's pool, or its own).
        namespace: key prefix, as the store's.
    """

    def __init__(self, redis: RedisClient, namespace: str = "payrouter") -> None:
        self._redis = redis
        self._ns = namespace
        self._p = {name: f"{namespace}:{keys.journal_index(name)}" for name in keys.JOURNAL_INDEXES}
        self._open = redis.register_script(_OPEN)
        self._advance = redis.register_script(_ADVANCE)
        self._discard = redis.register_script(_DISCARD)
        self._pipe = ScriptPipe.of(redis)  # voucher records: the paid path

    def _rec(self, record_id: str) -> str:
        return f"{self._ns}:{keys.journal_record(record_id)}"

    def _ans(self, record_id: str) -> str:
        return f"{self._ns}:{keys.journal_answer(record_id)}"

    async def _run(self, coro: Any) -> Any:
        return await redis_call(coro)

    async def open(self, record: PaymentRecord, exposure: Exposure | None = None) -> Opened:
        p = self._p
        names = [self._rec(record.id), p["open"], p["time"], p["debts"], p["exposure"], p["exposure-high"]]
        args: list[Any] = [now_ms(), "1" if exposure else "0"]
        args += [exposure.amount, exposure.per_payer, exposure.total, exposure.expires_ms] if exposure else [0, 0, 0, 0]
        args += [record.payer, record.id, record.created_at]
        for name, value in record.to_fields().items():
            if name not in ("state", "attempts", "created_at"):
                args += [name, value]
        reply = await self._run(self._open(keys=names, args=args))
        outcome = _text(reply[0])
        if outcome == "existing":
            return Opened("existing", PaymentRecord.from_fields(_pairs(reply[1])))
        if outcome == "debtor":
            return Opened("debtor", record)
        record.state, record.attempts, record.created_at = State.CLAIMED, int(reply[1]), int(reply[3])
        return Opened("new", record, held=bool(int(reply[2])))

    async def advance(
        self,
        record: PaymentRecord,
        expected: Iterable[str],
        answer: bytes | None = None,
        answer_ttl: int = 0,
        drop_answer: bool = False,
        owner_was: str | None = None,
    ) -> tuple[bool, str]:
        names, args = self._advance_call(record, expected, answer, answer_ttl, drop_answer, owner_was)
        written, state = await self._run(self._advance(keys=names, args=args))
        return bool(int(written)), _text(state)

    async def send_advance(
        self, record: PaymentRecord, expected: Iterable[str], answer: bytes | None = None, answer_ttl: int = 0
    ) -> Written[tuple[bool, str]]:
        names, args = self._advance_call(record, expected, answer, answer_ttl, False, None)
        sent = await send_script(self._redis, self._advance, names, args, self._pipe)

        async def read() -> tuple[bool, str]:
            written, state = await sent.reply()
            return bool(int(written)), _text(state)

        return Written(read)

    def _advance_call(
        self,
        record: PaymentRecord,
        expected: Iterable[str],
        answer: bytes | None,
        answer_ttl: int,
        drop_answer: bool,
        owner_was: str | None,
    ) -> tuple[list[str], list[Any]]:
        p = self._p
        names = [
            self._rec(record.id),
            self._ans(record.id),
            p["open"],
            p["time"],
            p["settled"],
            p["debts"],
            p["exposure"],
        ]
        mode = "keep" if answer is not None else ("drop" if drop_answer else "")
        args: list[Any] = [
            owner_was or record.owner,
            " " + " ".join(expected) + " ",
            record.state,
            record.payer,
            record.id,
            record.updated_at,
            record.created_at,
            record.settled_at,
            mode,
            answer if answer is not None else b"",
            max(int(answer_ttl), 1),
        ]
        for name, value in record.to_fields().items():
            args += [name, value]
        return names, args

    async def discard(self, record: PaymentRecord) -> bool:
        p = self._p
        names = [self._rec(record.id), p["open"], p["time"], p["exposure"]]
        return bool(int(await self._run(self._discard(keys=names, args=[record.owner, record.id]))))

    async def get(self, record_id: str) -> PaymentRecord | None:
        data = await self._run(self._redis.hgetall(self._rec(record_id)))
        if not data:
            return None
        return PaymentRecord.from_fields({_text(k): _text(v) for k, v in data.items()})

    async def answer(self, record_id: str) -> bytes | None:
        value: bytes | None = await self._run(self._redis.get(self._ans(record_id)))
        return value

    async def _load(self, ids: list[Any]) -> list[PaymentRecord]:
        if not ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for record_id in ids:
                pipe.hgetall(self._rec(_text(record_id)))
            rows = await self._run(pipe.execute())
        return [PaymentRecord.from_fields({_text(k): _text(v) for k, v in row.items()}) for row in rows if row]

    async def open_records(self, limit: int = 1000) -> list[PaymentRecord]:
        ids = await self._run(self._redis.zrange(self._p["open"], 0, limit - 1))
        return await self._load(ids)

    async def records(
        self, start_ms: int = 0, end_ms: int | None = None, limit: int = 1000, settled: bool = False
    ) -> list[PaymentRecord]:
        index = self._p["settled" if settled else "time"]
        high: int | str = "+inf" if end_ms is None else end_ms
        ids = await self._run(self._redis.zrangebyscore(index, start_ms, high, start=0, num=limit))
        return await self._load(ids)

    async def debts(self, payer: str) -> int:
        return int(await self._run(self._redis.hget(self._p["debts"], payer)) or 0)

    async def exposure(self) -> tuple[int, int]:
        entries, high = await self._run(
            _gather(self._redis.hgetall(self._p["exposure"]), self._redis.get(self._p["exposure-high"]))
        )
        now = now_ms()
        total = 0
        for value in entries.values():
            _payer, amount, expires = _text(value).split("|")
            if int(expires) > now:
                total += int(amount)
        return total, int(high or 0)

    async def close(self) -> None:
        if self._pipe is not None:
            await self._pipe.close()
        await self._redis.aclose()


async def _gather(*coros: Any) -> list[Any]:
    return [await c for c in coros]
