"""Channel state on Redis: one hash per channel, every step one Lua script on that one key.

A channel's key has its id as hash tag (`payrouter.store.keys.channel`), so reserve, commit,
release and the on-chain refresh are each atomic on a standalone Redis and on a Cluster alike,
across any number of server instances. The id index (`keys.CHANNEL_INDEX`) lives in its own
slot: it is written outside those scripts (before the channel is created, after it is deleted,
so a crash leaves at worst an id without a channel, never a channel nobody lists) and only the
claimer reads it.

Amounts are uint128 but Lua numbers are doubles, exact only up to 2**53. So amounts are stored
as canonical decimal strings (no sign, no leading zeros; Python writes them with ``str(int)``)
and the scripts compare them by length, then digit by digit, and add them digit by digit; no
amount ever becomes a Lua number. Only times (ms, below 2**53) do. Lua's own ``<`` on strings
is not used: it follows the server's collation locale.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, get_args

from payrouter.channels.state import (
    ChannelState,
    InvalidCharge,
    Reserved,
    ReserveOutcome,
    channel_key_id,
    check_uint,
    expected_charged,
)
from payrouter.store import keys
from payrouter.store.base import Written
from payrouter.store.pipe import ScriptPipe
from payrouter.store.redis import RedisClient, redis_call, send_script

__all__ = ["RedisChannelStore"]

_DECIMAL = """
local function cmp(a, b)
  if #a ~= #b then return #a < #b and -1 or 1 end
  for i = 1, #a do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y and -1 or 1 end
  end
  return 0
end
local function add(a, b)
  local digits, carry, i, j = {}, 0, #a, #b
  while i > 0 or j > 0 or carry > 0 do
    local d = carry
    if i > 0 then d = d + string.byte(a, i) - 48; i = i - 1 end
    if j > 0 then d = d + string.byte(b, j) - 48; j = j - 1 end
    carry = d >= 10 and 1 or 0
    table.insert(digits, 1, string.char(48 + d % 10))
  end
  local sum = table.concat(digits):gsub('^0+', '')
  if sum == '' then return '0' end
  return sum
end
-- raise total_claimed to `new` (never lower it) and keep charged >= total_claimed
local function raise_claimed(key, charged, claimed, new)
  if cmp(new, claimed) > 0 then
    claimed = new
    redis.call('hset', key, 'total_claimed', claimed)
  end
  if cmp(charged, claimed) < 0 then redis.call('hset', key, 'charged', claimed) end
end
"""

# Redis's clock, not the callers': every instance then agrees on when a reservation lapses.
_NOW = """
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: channel. ARGV: expected charged ('-' when none can match), signed max, signature,
# token, ttl ms, '1' for a refund.
_RESERVE = (
    _DECIMAL
    + _NOW
    + """
if redis.call('exists', KEYS[1]) == 0 then return {'not_found'} end
local f = redis.call('hmget', KEYS[1], 'charged', 'balance', 'withdraw_requested_at', 'pending', 'pending_until_ms')
local kind = 'ok'
if f[4] ~= '' and f[4] ~= ARGV[4] and tonumber(f[5]) > now then kind = 'busy'
elseif f[1] ~= ARGV[1] then kind = 'mismatch'
elseif cmp(ARGV[2], f[2]) > 0 then kind = 'exceeds_balance'
elseif f[3] ~= '0' and ARGV[6] ~= '1' then kind = 'withdrawing'
else
  redis.call('hset', KEYS[1], 'pending', ARGV[4], 'pending_max', ARGV[2], 'pending_sig', ARGV[3],
    'pending_until_ms', string.format('%d', now + tonumber(ARGV[5])))
end
return {kind, redis.call('hgetall', KEYS[1])}
"""
)

_CLEAR_PENDING = "'pending', '', 'pending_max', '0', 'pending_sig', '', 'pending_until_ms', '0'"

# KEYS: channel. ARGV: token, charge. ('committed' holds the token of the last commit.)
_COMMIT = (
    _DECIMAL
    + """
local f = redis.call('hmget', KEYS[1], 'charged', 'pending', 'pending_max', 'pending_sig', 'committed')
if f[2] ~= ARGV[1] then
  -- a retry of the commit that ended this token's request: its reply was lost, not its effect
  if f[5] == ARGV[1] then return {'ok', redis.call('hgetall', KEYS[1])} end
  return {'gone'}
end
local charged = add(f[1], ARGV[2])
if cmp(charged, f[3]) > 0 then return {'over', f[1], f[3]} end
redis.call('hset', KEYS[1], 'charged', charged, 'signed_max', f[3], 'signature', f[4], 'committed', ARGV[1], """
    + _CLEAR_PENDING
    + """)
return {'ok', redis.call('hgetall', KEYS[1])}
"""
)

# KEYS: channel. ARGV: token.
_RELEASE = (
    """
if redis.call('hget', KEYS[1], 'pending') ~= ARGV[1] then return 0 end
redis.call('hset', KEYS[1], """
    + _CLEAR_PENDING
    + """)
return 1
"""
)

# KEYS: channel. ARGV: token, ttl ms.
_EXTEND = (
    _NOW
    + """
if redis.call('hget', KEYS[1], 'pending') ~= ARGV[1] then return 0 end
redis.call('hset', KEYS[1], 'pending_until_ms', string.format('%d', now + tonumber(ARGV[2])))
return 1
"""
)

# KEYS: channel. ARGV: config, payer, balance, total_claimed, withdraw_requested_at,
# refund_nonce, synced_at_ms.
_UPSERT = (
    _DECIMAL
    + """
local f = redis.call('hmget', KEYS[1], 'charged', 'total_claimed', 'synced_at_ms')
if not f[1] then
  redis.call('hset', KEYS[1], 'config', ARGV[1], 'payer', ARGV[2], 'balance', ARGV[3], 'total_claimed', ARGV[4],
    'withdraw_requested_at', ARGV[5], 'refund_nonce', ARGV[6], 'synced_at_ms', ARGV[7], 'charged', ARGV[4],
    'signed_max', '0', 'signature', '', 'committed', '', """
    + _CLEAR_PENDING
    + """)
else
  if tonumber(ARGV[7]) >= tonumber(f[3]) then
    redis.call('hset', KEYS[1], 'config', ARGV[1], 'payer', ARGV[2], 'balance', ARGV[3],
      'withdraw_requested_at', ARGV[5], 'refund_nonce', ARGV[6], 'synced_at_ms', ARGV[7])
  end
  raise_claimed(KEYS[1], f[1], f[2], ARGV[4])
end
return redis.call('hgetall', KEYS[1])
"""
)

# KEYS: channel. ARGV: total_claimed.
_RECORD_CLAIMED = (
    _DECIMAL
    + """
local f = redis.call('hmget', KEYS[1], 'charged', 'total_claimed')
if not f[1] then return 0 end
raise_claimed(KEYS[1], f[1], f[2], ARGV[1])
return 1
"""
)


_OUTCOMES: dict[str, ReserveOutcome] = {kind: kind for kind in get_args(ReserveOutcome)}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _state(channel_id: str, fields: dict[Any, Any] | list[Any]) -> ChannelState:
    """A `ChannelState` from a HGETALL reply (a dict from redis-py, a flat list from a script)."""
    if isinstance(fields, list):
        fields = {fields[i]: fields[i + 1] for i in range(0, len(fields), 2)}
    f = {_text(k): _text(v) for k, v in fields.items()}
    return ChannelState(
        channel_id=channel_id,
        config=f["config"],
        payer=f["payer"],
        balance=int(f["balance"]),
        total_claimed=int(f["total_claimed"]),
        withdraw_requested_at=int(f["withdraw_requested_at"]),
        refund_nonce=int(f["refund_nonce"]),
        synced_at_ms=int(f["synced_at_ms"]),
        charged=int(f["charged"]),
        signed_max=int(f["signed_max"]),
        signature=f["signature"],
        pending=f["pending"],
        pending_until_ms=int(f["pending_until_ms"]),
    )


class RedisChannelStore:
    """`ChannelStore` on Redis (standalone or Cluster), shared by every server instance.

    Args:
        redis: a client (e.g. `payrouter.store.redis.connect`); `close` closes it.
        namespace: key prefix, as the store's.
    """

    def __init__(self, redis: RedisClient, namespace: str = "payrouter") -> None:
        self._redis = redis
        self._ns = namespace
        self._index = f"{namespace}:{keys.CHANNEL_INDEX}"
        self._reserve = redis.register_script(_RESERVE)
        self._commit = redis.register_script(_COMMIT)
        self._release = redis.register_script(_RELEASE)
        self._extend = redis.register_script(_EXTEND)
        self._upsert = redis.register_script(_UPSERT)
        self._record_claimed = redis.register_script(_RECORD_CLAIMED)
        self._pipe = ScriptPipe.of(redis)  # reserve and commit: the paid path

    def _key(self, channel_id: str) -> str:
        return f"{self._ns}:{keys.channel(channel_id)}"

    async def get(self, channel_id: str) -> ChannelState | None:
        cid = channel_key_id(channel_id)
        fields = await redis_call(self._redis.hgetall(self._key(cid)))
        return _state(cid, fields) if fields else None

    async def get_many(self, ids: Iterable[str]) -> dict[str, ChannelState]:
        wanted = list(dict.fromkeys(channel_key_id(i) for i in ids))
        if not wanted:
            return {}
        # One key per command: a Cluster client routes each to its slot.
        async with self._redis.pipeline(transaction=False) as pipe:
            for cid in wanted:
                pipe.hgetall(self._key(cid))
            rows = await redis_call(pipe.execute())
        return {cid: _state(cid, row) for cid, row in zip(wanted, rows, strict=True) if row}

    async def reserve(
        self,
        channel_id: str,
        *,
        amount: int,
        signed_max: int,
        signature: str,
        token: str,
        ttl_ms: int,
        refund: bool = False,
    ) -> Reserved:
        sent = await self.send_reserve(
            channel_id,
            amount=amount,
            signed_max=signed_max,
            signature=signature,
            token=token,
            ttl_ms=ttl_ms,
            refund=refund,
        )
        return await sent.reply()

    async def send_reserve(
        self,
        channel_id: str,
        *,
        amount: int,
        signed_max: int,
        signature: str,
        token: str,
        ttl_ms: int,
        refund: bool = False,
    ) -> Written[Reserved]:
        expected = expected_charged(amount=amount, signed_max=signed_max, token=token, ttl_ms=ttl_ms, refund=refund)
        cid = channel_key_id(channel_id)
        args = [
            str(expected) if expected >= 0 else "-",
            str(signed_max),
            signature,
            token,
            str(ttl_ms),
            "1" if refund else "0",
        ]
        sent = await send_script(self._redis, self._reserve, [self._key(cid)], args, self._pipe)

        async def read() -> Reserved:
            reply = await sent.reply()
            kind = _OUTCOMES[_text(reply[0])]
            return Reserved(kind, _state(cid, reply[1]) if len(reply) > 1 else None)

        return Written(read)

    async def commit(self, channel_id: str, token: str, charge: int) -> ChannelState | None:
        return await (await self.send_commit(channel_id, token, charge)).reply()

    async def send_commit(self, channel_id: str, token: str, charge: int) -> Written[ChannelState | None]:
        if type(charge) is not int or charge < 0:
            raise InvalidCharge(f"charge must be a non-negative int, got {charge!r}")
        cid = channel_key_id(channel_id)
        if not token:
            return Written.done(None)
        sent = await send_script(self._redis, self._commit, [self._key(cid)], [token, str(charge)], self._pipe)

        async def read() -> ChannelState | None:
            reply = await sent.reply()
            outcome = _text(reply[0])
            if outcome == "gone":
                return None
            if outcome == "over":
                raise InvalidCharge(
                    f"charged {_text(reply[1])} + {charge} would exceed the voucher's max {_text(reply[2])}"
                )
            return _state(cid, reply[1])

        return Written(read)

    async def release(self, channel_id: str, token: str) -> bool:
        cid = channel_key_id(channel_id)
        if not token:
            return False
        # through the pipe: after the reservation it gives back, on the same connection
        sent = await send_script(self._redis, self._release, [self._key(cid)], [token], self._pipe)
        return bool(int(await sent.reply()))

    async def extend(self, channel_id: str, token: str, ttl_ms: int) -> bool:
        if not token:
            return False
        cid = channel_key_id(channel_id)
        return bool(int(await redis_call(self._extend(keys=[self._key(cid)], args=[token, ttl_ms]))))

    async def upsert_onchain(
        self,
        channel_id: str,
        *,
        config: str,
        payer: str,
        balance: int,
        total_claimed: int,
        withdraw_requested_at: int,
        refund_nonce: int,
        synced_at_ms: int,
    ) -> ChannelState:
        cid = channel_key_id(channel_id)
        args = [
            config,
            payer,
            str(check_uint("balance", balance)),
            str(check_uint("total_claimed", total_claimed)),
            str(check_uint("withdraw_requested_at", withdraw_requested_at, 40)),
            str(check_uint("refund_nonce", refund_nonce, 256)),
            str(check_uint("synced_at_ms", synced_at_ms, 53)),
        ]
        # Index first (NX keeps the first sighting), on every refresh: an entry lost to a race
        # with `delete` comes back with the next sync.
        await redis_call(self._redis.zadd(self._index, {cid: synced_at_ms}, nx=True))
        fields = await redis_call(self._upsert(keys=[self._key(cid)], args=args))
        return _state(cid, fields)

    async def record_claimed(self, channel_id: str, total_claimed: int) -> None:
        cid = channel_key_id(channel_id)
        args = [str(check_uint("total_claimed", total_claimed))]
        await redis_call(self._record_claimed(keys=[self._key(cid)], args=args))

    async def ids(self) -> list[str]:
        return [_text(cid) for cid in await redis_call(self._redis.zrange(self._index, 0, -1))]

    async def delete(self, channel_id: str) -> None:
        cid = channel_key_id(channel_id)
        await redis_call(self._redis.delete(self._key(cid)))
        await redis_call(self._redis.zrem(self._index, cid))

    async def close(self) -> None:
        if self._pipe is not None:
            await self._pipe.close()
        await self._redis.aclose()
