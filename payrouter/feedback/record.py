"""What a served call leaves for its payer's feedback, written off the paid path."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

from pydantic_core import to_json

from payrouter.routing.features import features_and_signature
from payrouter.store import Store, StoreError

__all__ = ["FEEDBACK_TTL", "CallRecord", "FeedbackRecorder", "call_key", "rated_key"]

log = logging.getLogger("payrouter.feedback")

# how long a completion can be rated after it was served, by default (seconds; `feedback_ttl`)
FEEDBACK_TTL = 86_400
_FLUSH_S = 0.05
_MAX_PENDING = 10_000


def call_key(completion_id: str) -> str:
    """The store key of a served call's `CallRecord`."""
    return f"feedback:call:{completion_id}"


def rated_key(completion_id: str) -> str:
    """The store key holding a completion's rating (set once)."""
    return f"feedback:rated:{completion_id}"


@dataclass(frozen=True, slots=True)
class CallRecord:
    """A served call, as feedback needs it.

    Attributes:
        payer: the address that paid (only it may rate the call).
        model: the catalog model that answered.
        router_name: that model's name in the router's training data ("" when it has none).
        rule, arm: the split rule and arm the call was routed by ("" when none).
        features: the prompt's hashed feature indices (`payrouter.routing.features`).
        format: the prompt's format class (`format_signature`).
    """

    payer: str
    model: str
    router_name: str
    rule: str
    arm: str
    features: list[int]
    format: str

    def to_json(self) -> bytes:
        """Serialise for the store."""
        fields = {name: getattr(self, name) for name in self.__slots__}  # flat: no asdict deep copy
        return to_json(fields)

    @classmethod
    def from_json(cls, data: bytes) -> CallRecord:
        """Inverse of `to_json`.

        Raises:
            ValueError: not a record.
        """
        try:
            return cls(**json.loads(data))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"not a feedback call record: {exc}") from None


@dataclass(frozen=True, slots=True)
class _Pending:
    completion_id: str
    payer: str
    model: str
    router_name: str
    rule: str
    arm: str
    prompt: str


class FeedbackRecorder:
    """Keeps a `CallRecord` per answered call, written in the background.

    `note` only queues (no hashing, no store call on the paid path); a task computes the
    prompt features and writes the records every ~50 ms. When the store fails the batch is
    dropped (logged): feedback on those calls is then refused as unknown, nothing else breaks.
    """

    def __init__(self, store: Store, ttl: int = FEEDBACK_TTL) -> None:
        self.store = store
        self.ttl = ttl
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def note(
        self, completion_id: str, payer: str, model: str, router_name: str, rule: str, arm: str, prompt: str
    ) -> None:
        """Queue the record of a call answered with ``completion_id``."""
        if not completion_id or len(self._pending) >= _MAX_PENDING:
            return
        self._pending.append(_Pending(completion_id, payer, model, router_name, rule, arm, prompt))
        self._wake.set()

    def start(self) -> None:
        """Start the background writer."""
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="payrouter-feedback")

    async def stop(self, grace: float = 2.0) -> None:
        """Write what is queued, then stop (waiting at most ``grace`` seconds for the writer)."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            # redis-py can lose a cancellation that lands mid-command (the writer then carried
            # on and waited for work forever, and shutdown with it): the flag ends the loop, and
            # shutdown never waits on it for long
            done, _ = await asyncio.wait({self._task}, timeout=grace)
            if not done:
                log.warning("feedback writer did not stop within %.0f s; leaving it", grace)
        await self.flush()

    async def flush(self) -> None:
        """Write every queued record now (in one store round trip)."""
        batch, self._pending = self._pending, []
        if not batch:
            return
        items = []
        for item in batch:
            features, signature = features_and_signature(item.prompt)
            record = CallRecord(item.payer, item.model, item.router_name, item.rule, item.arm, features, signature)
            items.append((call_key(item.completion_id), record.to_json()))
        try:
            await self.store.put_many(items, self.ttl)
        except StoreError as exc:
            log.warning("feedback records dropped (%d): %s", len(batch), exc)

    async def _run(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            if self._stopping:
                return
            await asyncio.sleep(_FLUSH_S)
            self._wake.clear()
            await self.flush()
