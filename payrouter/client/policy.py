"""Spending limits for agents: per call, per hour, per day, and allow-lists; persistent budgets.

Amounts are atomic units of the payment asset. Budgets add amounts across assets, which is
right for USD stablecoins of equal decimals (USDC, EURC-style 6-decimal tokens); restrict
``assets`` when that does not hold.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "BudgetStore",
    "FileBudgetStore",
    "MemoryBudgetStore",
    "PaymentRefused",
    "RedisBudgetStore",
    "SpendingPolicy",
]

HOUR = 3600
DAY = 86_400


class PaymentRefused(Exception):
    """The spending policy refused to pay; nothing was signed.

    Attributes:
        limit: which rule refused: ``max_per_call``, ``per_hour``, ``per_day``, ``network``,
            ``asset``, ``payee`` or ``scheme``.
        requested: the amount asked for (atomic units).
        allowed: what the limit still allows (atomic units), for amount limits.
    """

    def __init__(self, limit: str, message: str, requested: int = 0, allowed: int | None = None) -> None:
        super().__init__(message)
        self.limit = limit
        self.requested = requested
        self.allowed = allowed


@dataclass(frozen=True, slots=True)
class SpendingPolicy:
    """What an agent may pay.

    Attributes:
        max_per_call: the most one payment may be.
        per_hour, per_day: the most all payments in a rolling hour / day may add up to.
        networks: allowed networks (CAIP-2, or v1 names); None allows any.
        assets: allowed token addresses; None allows any.
        payees: allowed ``payTo`` addresses; None allows any.
    """

    max_per_call: int | None = None
    per_hour: int | None = None
    per_day: int | None = None
    networks: frozenset[str] | None = None
    assets: frozenset[str] | None = None
    payees: frozenset[str] | None = None

    def check_offer(self, network: str, asset: str, pay_to: str, amount: int) -> None:
        """Refuse an offer the allow-lists or the per-call cap rule out.

        Raises:
            PaymentRefused: naming the rule.
        """
        if self.networks is not None and network not in self.networks:
            raise PaymentRefused("network", f"network {network} is not allowed", amount)
        if self.assets is not None and asset.lower() not in {a.lower() for a in self.assets}:
            raise PaymentRefused("asset", f"asset {asset} is not allowed", amount)
        if self.payees is not None and pay_to.lower() not in {p.lower() for p in self.payees}:
            raise PaymentRefused("payee", f"payee {pay_to} is not allowed", amount)
        if self.max_per_call is not None and amount > self.max_per_call:
            raise PaymentRefused(
                "max_per_call",
                f"price {amount} exceeds max_per_call {self.max_per_call} by {amount - self.max_per_call}",
                amount,
                self.max_per_call,
            )

    def windows(self) -> dict[str, tuple[int, int]]:
        """``{limit name: (window seconds, limit)}`` of the rolling budgets that are set."""
        out = {}
        if self.per_hour is not None:
            out["per_hour"] = (HOUR, self.per_hour)
        if self.per_day is not None:
            out["per_day"] = (DAY, self.per_day)
        return out


class BudgetStore(Protocol):
    """Records spending so rolling budgets survive restarts and are shared between processes."""

    def reserve(self, amount: int, windows: dict[str, tuple[int, int]]) -> str:
        """Atomically check every window and record ``amount``; return a reservation id.

        Raises:
            PaymentRefused: a window would be exceeded (naming it and what is left).
        """
        ...

    def release(self, reservation: str) -> None:
        """Forget a reservation whose payment was not taken."""
        ...

    def credit(self, amount: int) -> str:
        """Record ``amount`` coming back (a channel refund): it offsets spending in every window
        it falls in, though a window's spending never counts below zero. Returns its id."""
        ...


def _over_budget(name: str, amount: int, spent: int, limit: int) -> PaymentRefused:
    left = max(limit - spent, 0)
    return PaymentRefused(
        name,
        f"price {amount} exceeds the {name} budget: {spent} of {limit} spent, {left} left "
        f"(over by {spent + amount - limit})",
        amount,
        left,
    )


def _check(entries: list[tuple[float, int, str]], amount: int, windows: dict[str, tuple[int, int]], now: float) -> None:
    for name, (seconds, limit) in windows.items():
        # credits are negative; a refund of money spent before the window must not make room
        # beyond the limit, hence the floor at zero
        spent = max(sum(a for t, a, _ in entries if t > now - seconds), 0)
        if spent + amount > limit:
            raise _over_budget(name, amount, spent, limit)


class MemoryBudgetStore:
    """A `BudgetStore` in process memory (forgotten on exit)."""

    def __init__(self) -> None:
        self._entries: list[tuple[float, int, str]] = []

    def reserve(self, amount: int, windows: dict[str, tuple[int, int]]) -> str:
        now = time.time()
        self._entries = [e for e in self._entries if e[0] > now - DAY]
        _check(self._entries, amount, windows, now)
        rid = secrets.token_hex(8)
        self._entries.append((now, amount, rid))
        return rid

    def release(self, reservation: str) -> None:
        self._entries = [e for e in self._entries if e[2] != reservation]

    def credit(self, amount: int) -> str:
        rid = secrets.token_hex(8)
        self._entries.append((time.time(), -amount, rid))
        return rid


class FileBudgetStore:
    """A `BudgetStore` in a JSON file, locked with ``flock`` so processes share it safely.

    Args:
        path: the file (created with mode 0600 if missing); default ``$PAYROUTER_BUDGET_FILE`` (as
            for the CLI), else ``~/.payrouter/spend.json``.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        if path is None:
            path = os.environ.get("PAYROUTER_BUDGET_FILE") or Path.home() / ".payrouter" / "spend.json"
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[tuple[float, int, str]]]:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        with os.fdopen(fd, "r+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            text = handle.read()
            try:
                entries = [(float(t), int(a), str(r)) for t, a, r in json.loads(text or "[]")]
            except (ValueError, TypeError):
                entries = []  # a corrupt file must not block spending checks forever; start over
            now = time.time()
            entries = [e for e in entries if e[0] > now - DAY]
            yield entries
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps(entries))
            handle.flush()
            os.fsync(handle.fileno())

    def reserve(self, amount: int, windows: dict[str, tuple[int, int]]) -> str:
        with self._locked() as entries:
            _check(entries, amount, windows, time.time())
            rid = secrets.token_hex(8)
            entries.append((time.time(), amount, rid))
            return rid

    def release(self, reservation: str) -> None:
        with self._locked() as entries:
            entries[:] = [e for e in entries if e[2] != reservation]

    def credit(self, amount: int) -> str:
        with self._locked() as entries:
            rid = secrets.token_hex(8)
            entries.append((time.time(), -amount, rid))
            return rid


_RESERVE = """
local now = tonumber(ARGV[1])
local amount = tonumber(ARGV[2])
redis.call('zremrangebyscore', KEYS[1], '-inf', now - 86400)
for i = 4, #ARGV, 3 do
  local name, seconds, limit = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local spent = 0
  for _, member in ipairs(redis.call('zrangebyscore', KEYS[1], now - seconds, '+inf')) do
    spent = spent + tonumber(string.match(member, ':(-?%d+)$'))
  end
  if spent < 0 then spent = 0 end
  if spent + amount > limit then return {name, spent, limit} end
end
redis.call('zadd', KEYS[1], now, ARGV[3] .. ':' .. ARGV[2])
redis.call('expire', KEYS[1], 90000)
return {}
"""


class RedisBudgetStore:
    """A `BudgetStore` in Redis (a sorted set per wallet), for agents running on many machines."""

    def __init__(self, url: str, key: str = "payrouter:agent-spend") -> None:
        import redis

        self._redis: Any = redis.Redis.from_url(url)
        self._key = key
        self._reserve = self._redis.register_script(_RESERVE)

    def reserve(self, amount: int, windows: dict[str, tuple[int, int]]) -> str:
        rid = secrets.token_hex(8)
        args: list[Any] = [time.time(), amount, rid]
        for name, (seconds, limit) in windows.items():
            args += [name, seconds, limit]
        refused = self._reserve(keys=[self._key], args=args)
        if refused:
            raise _over_budget(refused[0].decode(), amount, int(refused[1]), int(refused[2]))
        return f"{rid}:{amount}"

    def release(self, reservation: str) -> None:
        self._redis.zrem(self._key, reservation)

    def credit(self, amount: int) -> str:
        member = f"{secrets.token_hex(8)}:{-amount}"
        self._redis.zadd(self._key, {member: time.time()})
        self._redis.expire(self._key, 90_000)
        return member
