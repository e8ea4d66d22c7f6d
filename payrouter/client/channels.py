"""The agent's view of its ``batch-settlement`` payment channels, and where it is kept.

One channel per (network, token, receiver, payer): the agent deposits into it once, then
each request signs a voucher over the channel's new cumulative maximum. What the agent knows
about a channel (its config, what it deposited, what the server charged so far, the last
maximum it signed, what was refunded) lives in a `ChannelStore`:

- `MemoryChannelStore`: in process memory.
- `FileChannelStore`: one JSON file per channel in a directory; writes are serialised with an
  ``flock`` on a sidecar lock file and land with an atomic rename, so processes share it.
- `RedisChannelStore`: one hash per channel; a Lua compare-and-set makes writes atomic across
  machines.

Every write is a compare-and-set on the state's ``version``, so two payers racing on one
channel never lose an update: `update_channel` re-reads and retries.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "ChannelAttempt",
    "ChannelConflict",
    "ChannelState",
    "ChannelStore",
    "FileChannelStore",
    "MemoryChannelStore",
    "RedisChannelStore",
    "channel_key",
    "update_channel",
]


def channel_key(network: str, token: str, receiver: str, payer: str) -> str:
    """The store key of the channel between ``payer`` and ``receiver`` for ``token`` on ``network``.

    Addresses are compared case-insensitively, so the key lower-cases them.
    """
    return "|".join((network, token.lower(), receiver.lower(), payer.lower()))


@dataclass(frozen=True, slots=True)
class ChannelState:
    """What the agent knows about one channel. Amounts are atomic units of the token.

    Attributes:
        key: the `channel_key` it is stored under.
        network: CAIP-2 network (``eip155:<chain id>``).
        channel_id: the on-chain channel id, ``0x`` + 64 hex digits.
        config: the channel's config in wire form (``channelConfig`` of the payloads).
        balance: what was deposited minus what was refunded, as far as the agent knows.
        charged: the cumulative amount the server charged (what the next voucher builds on).
        signed_max: the highest cumulative maximum the agent signed.
        refunded: the total refunded to the agent so far.
        url: the last paid URL served through this channel (where a refund is asked for).
        updated_at: unix time of the last write.
        version: the store's compare-and-set version (0: not stored yet).
    """

    key: str
    network: str
    channel_id: str
    config: dict[str, Any] = field(hash=False)
    balance: int = 0
    charged: int = 0
    signed_max: int = 0
    refunded: int = 0
    url: str | None = None
    updated_at: float = 0.0
    version: int = 0

    @property
    def remaining(self) -> int:
        """What the server may still charge before the agent must top up (never negative)."""
        return max(self.balance - self.charged, 0)

    def to_json(self) -> str:
        """The state as JSON (integers as decimal strings, so no reader rounds them)."""
        return json.dumps(
            {
                "key": self.key,
                "network": self.network,
                "channelId": self.channel_id,
                "channelConfig": self.config,
                "balance": str(self.balance),
                "charged": str(self.charged),
                "signedMax": str(self.signed_max),
                "refunded": str(self.refunded),
                "url": self.url,
                "updatedAt": self.updated_at,
                "version": self.version,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> ChannelState:
        """Parse `to_json`'s output.

        Raises:
            ValueError: not a channel state.
        """
        data = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("channelConfig"), dict):
            raise ValueError("not a channel state")
        return cls(
            key=str(data["key"]),
            network=str(data["network"]),
            channel_id=str(data["channelId"]),
            config=data["channelConfig"],
            balance=_int(data.get("balance")),
            charged=_int(data.get("charged")),
            signed_max=_int(data.get("signedMax")),
            refunded=_int(data.get("refunded")),
            url=data.get("url"),
            updated_at=float(data.get("updatedAt") or 0),
            version=int(data.get("version") or 0),
        )


@dataclass(frozen=True, slots=True)
class ChannelAttempt:
    """One signed ``batch-settlement`` payment, as the payer needs it once the answer comes.

    Attributes:
        key: the channel's store key.
        channel_id: ``0x`` + 64 hex digits.
        chain_id: the channel's chain.
        config: the channel config in wire form.
        max_claimable: the cumulative maximum the voucher signed.
        deposit: the deposit the payment carries (0: voucher only).
    """

    key: str
    channel_id: str
    chain_id: int
    config: dict[str, Any] = field(hash=False)
    max_claimable: int
    deposit: int


def _int(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise ValueError(f"channel amount must be a decimal string, got {value!r}")


class ChannelConflict(RuntimeError):
    """A channel kept changing under `update_channel` for every attempt."""


class ChannelStore(Protocol):
    """Persistent, shareable channel states, written by compare-and-set."""

    def get(self, key: str) -> ChannelState | None:
        """The stored state of ``key`` (its ``version`` set), or None."""
        ...

    def compare_and_set(self, key: str, expected_version: int, state: ChannelState | None) -> bool:
        """Write ``state`` (None deletes) only if the stored version is ``expected_version``
        (0: nothing stored). The written state gets version ``expected_version + 1``.

        Returns:
            False, writing nothing, when another writer got there first.
        """
        ...

    def list(self) -> list[ChannelState]:
        """Every stored channel state."""
        ...


def update_channel(
    store: ChannelStore,
    key: str,
    change: Callable[[ChannelState | None], ChannelState | None],
    attempts: int = 50,
) -> ChannelState | None:
    """Atomically apply ``change`` to the state of ``key`` and return what was written.

    ``change`` gets the current state (or None) and returns the new one (None deletes); it may
    run several times when other writers race, so it must not have side effects. Returning the
    state it got unchanged (the same object) writes nothing.

    Raises:
        ChannelConflict: the channel changed under every attempt.
    """
    for attempt in range(attempts):
        current = store.get(key)
        new = change(current)
        if new is current:
            return current
        expected = current.version if current is not None else 0
        if new is not None:
            new = replace(new, key=key, updated_at=time.time(), version=expected + 1)
        if store.compare_and_set(key, expected, new):
            return new
        time.sleep(min(0.001 * 2**attempt, 0.05))
    raise ChannelConflict(f"channel {key} kept changing; gave up after {attempts} attempts")


class MemoryChannelStore:
    """A `ChannelStore` in process memory (forgotten on exit)."""

    def __init__(self) -> None:
        self._states: dict[str, ChannelState] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> ChannelState | None:
        return self._states.get(key)

    def compare_and_set(self, key: str, expected_version: int, state: ChannelState | None) -> bool:
        with self._lock:
            current = self._states.get(key)
            if (current.version if current is not None else 0) != expected_version:
                return False
            if state is None:
                self._states.pop(key, None)
            else:
                self._states[key] = replace(state, key=key, version=expected_version + 1)
            return True

    def list(self) -> list[ChannelState]:
        return list(self._states.values())


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class FileChannelStore:
    """A `ChannelStore` of one JSON file per channel in ``directory`` (mode 0700, files 0600).

    Readers never lock: a state file is replaced by an atomic rename, so it is always whole.
    Writers lock a sidecar ``.lock`` file with ``flock`` for the compare-and-set, which holds
    across threads and processes on one machine.

    Args:
        directory: default ``$PAYROUTER_CHANNELS_DIR`` (as for the CLI), else ``~/.payrouter/channels``.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        if directory is None:
            directory = os.environ.get("PAYROUTER_CHANNELS_DIR") or Path.home() / ".payrouter" / "channels"
        self.directory = Path(directory)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.directory / (_UNSAFE.sub("_", key) + ".json")

    def _read(self, path: Path) -> ChannelState | None:
        try:
            return ChannelState.from_json(path.read_bytes())
        except FileNotFoundError:
            return None

    @contextlib.contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the lock

    def get(self, key: str) -> ChannelState | None:
        return self._read(self._path(key))

    def compare_and_set(self, key: str, expected_version: int, state: ChannelState | None) -> bool:
        path = self._path(key)
        with self._locked(path):
            current = self._read(path)
            if (current.version if current is not None else 0) != expected_version:
                return False
            if state is None:
                path.unlink(missing_ok=True)
                return True
            text = replace(state, key=key, version=expected_version + 1).to_json()
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".json")
            try:
                with os.fdopen(fd, "w") as handle:
                    handle.write(text)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
            return True

    def list(self) -> list[ChannelState]:
        states = []
        for path in sorted(self.directory.glob("*.json")):
            if path.name.startswith(".tmp-"):
                continue
            state = self._read(path)
            if state is not None:
                states.append(state)
        return states


# KEYS[1]: the channel hash, KEYS[2]: the index set. ARGV: expected version, channel key,
# new JSON ("" deletes). The version lives in the hash, next to the JSON, so one script
# compares and writes without a window for another writer.
_CAS = """
local current = tonumber(redis.call('hget', KEYS[1], 'version') or '0')
if current ~= tonumber(ARGV[1]) then return 0 end
if ARGV[3] == '' then
  redis.call('del', KEYS[1])
  redis.call('srem', KEYS[2], ARGV[2])
else
  redis.call('hset', KEYS[1], 'version', current + 1, 'state', ARGV[3])
  redis.call('sadd', KEYS[2], ARGV[2])
end
return 1
"""


class RedisChannelStore:
    """A `ChannelStore` in Redis, for agents running on many machines.

    Args:
        url: ``redis://...``.
        prefix: keys are ``<prefix>:<channel key>`` plus the index set ``<prefix>:index``.
    """

    def __init__(self, url: str, prefix: str = "payrouter:agent-channels") -> None:
        import redis

        self._redis: Any = redis.Redis.from_url(url)
        self._prefix = prefix
        self._cas = self._redis.register_script(_CAS)

    def _key(self, key: str) -> str:
        return f"{self._prefix}:{key}"

    def get(self, key: str) -> ChannelState | None:
        version, text = self._redis.hmget(self._key(key), "version", "state")
        if text is None:
            return None
        return replace(ChannelState.from_json(text), version=int(version))

    def compare_and_set(self, key: str, expected_version: int, state: ChannelState | None) -> bool:
        text = "" if state is None else replace(state, key=key, version=expected_version + 1).to_json()
        done = self._cas(keys=[self._key(key), f"{self._prefix}:index"], args=[expected_version, key, text])
        return bool(done)

    def list(self) -> list[ChannelState]:
        keys = sorted(k.decode() for k in self._redis.smembers(f"{self._prefix}:index"))
        return [s for s in (self.get(k) for k in keys) if s is not None]
