"""Waiting for settlement receipts: one poller per process for every transaction in flight.

A settlement that polls for its own receipt makes a round trip to the node per poll: with a
block every second or two and a hundred settlements in flight, that is a thousand requests a
second, and most of the service's CPU. `ReceiptWatcher` asks the node for its block number
instead, and for receipts only when a block came (every pending transaction, in one batch) or
a transaction was just handed to it (that one, in the same request).
"""

from __future__ import annotations

import asyncio
import contextlib

from payrouter.chain import ChainClient, ChainError, Receipt

__all__ = ["ReceiptWatcher"]

_FIRST = 0.005  # seconds between polls while blocks come or transactions arrive
_SLOWEST = 0.1  # polls slow down to this while nothing arrives and no block comes
_BATCH = 200  # receipts per JSON-RPC batch


class ReceiptWatcher:
    """Waits for the receipts of many transactions with one poll loop over one `ChainClient`.

    The loop runs while someone waits and stops by itself. A failed poll fails the waits it
    was answering (`ChainError`): whether those transactions were mined is unknown, as when a
    single poll fails.
    """

    def __init__(self, chain: ChainClient) -> None:
        self._chain = chain
        self._waiting: dict[str, list[asyncio.Future[Receipt]]] = {}
        self._unchecked: set[str] = set()  # arrived since the last poll: asked once whatever the block
        self._block = -1  # the block number at the last poll that asked for every receipt
        self._task: asyncio.Task[None] | None = None
        self._arrived: asyncio.Event | None = None

    async def wait(self, tx_hash: str, timeout: float) -> Receipt | None:
        """The receipt of ``tx_hash`` once mined, or None when a last look after ``timeout``
        seconds still finds none.

        Raises:
            ChainError: the node could not be asked.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Receipt] = loop.create_future()
        self._waiting.setdefault(tx_hash, []).append(future)
        self._unchecked.add(tx_hash)
        if self._arrived is None:
            self._arrived = asyncio.Event()
        self._arrived.set()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run())
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            # one last look of its own: on a node slower than the timeout, the poll that would
            # have found it is still on its way
            try:
                return await self._chain.receipt(tx_hash)
            except ChainError:
                return None
        finally:
            futures = self._waiting.get(tx_hash, [])
            if future in futures:  # timed out or cancelled
                futures.remove(future)
                if not futures:
                    del self._waiting[tx_hash]

    async def _run(self) -> None:
        assert self._arrived is not None
        delay = _FIRST
        while self._waiting:
            if not self._unchecked:
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), delay)
            # a new transaction is asked at once (on a chain that mines on arrival its receipt is
            # there already); those arriving meanwhile wait for the next poll, which batches them
            came = await self._poll()
            delay = _FIRST if came or self._unchecked else min(delay * 1.5, _SLOWEST)

    async def _poll(self) -> bool:
        """One poll; True when a block came since the last one."""
        fresh = [h for h in self._unchecked if h in self._waiting]
        self._unchecked.clear()
        try:
            replies = await self._chain.batch(
                [("eth_blockNumber", []), *(("eth_getTransactionReceipt", [h]) for h in fresh)]
            )
            if isinstance(replies[0], ChainError):
                raise replies[0]
            block = int(replies[0], 16)
            asked: dict[str, object] = dict(zip(fresh, replies[1:], strict=True))
            came = block != self._block
            if came:
                rest = [h for h in self._waiting if h not in asked]
                for start in range(0, len(rest), _BATCH):
                    chunk = rest[start : start + _BATCH]
                    found = await self._chain.batch([("eth_getTransactionReceipt", [h]) for h in chunk])
                    asked.update(zip(chunk, found, strict=True))
                self._block = block
        except (ChainError, ValueError, TypeError) as exc:  # unreachable, or an answer we cannot read
            # as when each waiter's own poll fails: whether they were mined is unknown
            for tx_hash in list(self._waiting):
                self._answer(tx_hash, ChainError(str(exc)))
            return False
        for tx_hash, reply in asked.items():
            if isinstance(reply, ChainError | dict):
                self._answer(tx_hash, reply)
        return came

    def _answer(self, tx_hash: str, reply: dict[str, object] | ChainError) -> None:
        for future in self._waiting.pop(tx_hash, []):
            if future.done():
                continue
            if isinstance(reply, ChainError):
                future.set_exception(ChainError(str(reply)))
            else:
                future.set_result(ChainClient._receipt(reply))
