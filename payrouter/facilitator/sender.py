"""Sending transactions from the operator's gas wallets, one nonce at a time per wallet across workers.

One wallet sends one transaction at a time (its nonce lock is held from reading the nonce to
the node accepting the transaction: a round trip to the node, ~50 ms to a hosted RPC), which
caps settlements at about 1 / that round trip per wallet. `GasPool` spreads sends over several
wallets, each with its own nonce sequence.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from collections.abc import Sequence

from eth_typing import ChecksumAddress
from eth_utils.crypto import keccak

from payrouter import metrics
from payrouter.chain import ChainClient, ChainError, Receipt, ReplyLost
from payrouter.store import keys
from payrouter.store.base import Store, StoreError
from payrouter.x402.errors import SettlementInDoubt
from wallets import Eip1559Transaction, TransactionSigner

__all__ = ["GasPool", "GasSender"]

# Fees are re-read at most this often: one RPC per transaction is a noticeable share of a
# settlement, and a 10 s old base fee is covered by the 2x head room of ``fee_per_gas``.
_FEE_TTL = 10.0
# A cached gas-wallet nonce expires after a quiet hour, so a wallet also used elsewhere
# re-reads the chain now and then.
_NONCE_TTL = 3600
_LOCK_TIMEOUT = 10.0
# A crashed holder blocks its wallet at most this long (as `Store.lock` with the timeout above).
_LOCK_TTL = 15
# A busy wallet's lock is polled after 0.5 ms, then ever more slowly up to every 8 ms: a send
# holds it for a round trip to the node, and fixed 1 ms polling from every waiting instance
# costs Redis and the waiters' CPU more than the sends do.
_POLL_FIRST = 0.0005
_POLL_MAX = 0.008


def _is_nonce_error(exc: ChainError) -> bool:
    text = str(exc).lower()
    return "nonce" in text or "already known" in text or "replacement transaction" in text


class GasSender:
    """Signs and broadcasts EIP-1559 transactions from ``gas_wallet``.

    The next nonce is kept in ``store`` under ``keys.gas_nonce(chain_id, address)`` and
    advanced only after the node accepted a transaction, under a store lock of the same name,
    so concurrent senders (in any worker sharing the store) neither collide nor leave gaps.
    If the node disagrees (another sender used the wallet), the nonce is re-read from the chain
    once and the send retried.

    Args:
        chain: JSON-RPC client of the chain.
        gas_wallet: pays the gas; its key never appears in errors or logs.
        store: shared store holding the nonce and its lock.
        chain_id: EVM chain id the transactions are signed for.
    """

    def __init__(self, chain: ChainClient, gas_wallet: TransactionSigner, store: Store, chain_id: int) -> None:
        self._chain = chain
        self._gas = gas_wallet
        self._store = store
        self._chain_id = chain_id
        self._fee: tuple[int, int] | None = None
        self._fee_at = 0.0
        # Senders of this process queue here, so one of them at a time polls the store lock.
        self._local = asyncio.Lock()
        self._waiting = 0

    def __repr__(self) -> str:
        return f"GasSender(address={self._gas.address}, chain_id={self._chain_id})"

    @property
    def address(self) -> ChecksumAddress:
        """The gas wallet's address (the ``from`` of every transaction sent)."""
        return self._gas.address

    @property
    def busy(self) -> bool:
        """A send of this process holds (or waits for) the wallet."""
        return self._waiting > 0

    @property
    def waiting(self) -> int:
        """Sends of this process in progress or queued on the wallet."""
        return self._waiting

    async def fees(self) -> tuple[int, int]:
        """``(maxFeePerGas, maxPriorityFeePerGas)``, cached for 10 s.

        Raises:
            ChainError: the node could not be asked.
        """
        now = time.monotonic()
        if self._fee is None or now - self._fee_at > _FEE_TTL:
            self._fee = await self._chain.fee_per_gas()
            self._fee_at = now
        return self._fee

    async def send(self, to: str, data: bytes, gas: int) -> tuple[str, Receipt | None]:
        """Sign and send a call of ``to`` with ``data`` and a gas limit of ``gas``.

        Returns:
            ``(transaction hash, receipt)``; the receipt is None when the node does not mine on
            arrival (poll `ChainClient.wait_for_receipt`). A receipt may have status 0: a
            reverted transaction was still sent and used its nonce.

        Raises:
            SettlementInDoubt: sent, reply lost: the node may have taken it (``transaction``
                holds the hash; ``payer`` is None, the caller knows it).
            ChainError, StoreError: nothing was sent.
        """
        self._waiting += 1
        try:
            max_fee, tip = await self.fees()
            # Queued behind this process's own sends: each is bounded by the node's timeouts.
            await self._local.acquire()
            try:
                token = await self._claim(time.monotonic() + _LOCK_TIMEOUT)
                try:
                    return await self._send_locked(to, data, gas, max_fee, tip)
                finally:
                    await self._unclaim(token)
                    await self._let_others_in()
            finally:
                self._local.release()
        finally:
            self._waiting -= 1

    async def try_send(self, to: str, data: bytes, gas: int) -> tuple[str, Receipt | None] | None:
        """`send` if the wallet is free right now (here and in every instance sharing the store),
        else None at once (nothing sent).

        Raises:
            as `send`.
        """
        if self._local.locked():
            return None
        self._waiting += 1
        try:
            max_fee, tip = await self.fees()
            if self._local.locked():
                return None
            await self._local.acquire()
            try:
                token = await self._claim_once()
                if token is None:
                    return None
                try:
                    return await self._send_locked(to, data, gas, max_fee, tip)
                finally:
                    await self._unclaim(token)
            finally:
                self._local.release()
        finally:
            self._waiting -= 1

    @property
    def _lock_key(self) -> str:
        # the key `Store.lock(gas_nonce)` holds (RedisStore): instances locking either way exclude each other
        return f"lock:{keys.gas_nonce(self._chain_id, self._gas.address)}"

    async def _claim_once(self) -> str | None:
        token = secrets.token_hex(16)
        return token if await self._store.claim(self._lock_key, token, _LOCK_TTL) else None

    async def _claim(self, deadline: float) -> str:
        token = await self._claim_once()
        if token is not None:
            return token
        # Another instance holds the wallet. Its next queued send would re-take it at once,
        # long before a poll of ours lands: ask it to leave a gap (`_let_others_in`).
        delay = _POLL_FIRST
        asked = 0.0
        while token is None:
            if time.monotonic() >= deadline:
                raise StoreError(f"gas wallet {self._gas.address} busy for {_LOCK_TIMEOUT} s")
            if time.monotonic() - asked > 0.5:
                await self._store.put(self._wanted_key, b"1", 1)
                asked = time.monotonic()
            await asyncio.sleep(delay)
            delay = min(delay * 2, _POLL_MAX)
            token = await self._claim_once()
        with contextlib.suppress(StoreError):
            await self._store.put(self._wanted_key, b"", 1)
        return token

    async def _let_others_in(self) -> None:
        """Just released the wallet with more sends of this process queued: if another instance
        waits for it, hold our queue back for longer than its poll interval."""
        if self._waiting > 1:
            with contextlib.suppress(StoreError):
                if await self._store.get(self._wanted_key):
                    await asyncio.sleep(_POLL_MAX * 1.5)

    @property
    def _wanted_key(self) -> str:
        return f"{keys.gas_nonce(self._chain_id, self._gas.address)}:wanted"

    async def _unclaim(self, token: str) -> None:
        # best effort: an unreleased lock expires by itself, and the send inside it is done
        with contextlib.suppress(StoreError):
            await self._store.release(self._lock_key, token)

    async def _send_locked(self, to: str, data: bytes, gas: int, max_fee: int, tip: int) -> tuple[str, Receipt | None]:
        nonce_key = keys.gas_nonce(self._chain_id, self._gas.address)
        cached = await self._store.get(nonce_key)
        nonce = int(cached) if cached else await self._chain.transaction_count(self._gas.address, "pending")
        for attempt in range(2):
            tx = Eip1559Transaction(
                chain_id=self._chain_id,
                nonce=nonce,
                max_priority_fee_per_gas=tip,
                max_fee_per_gas=max_fee,
                gas=gas,
                to=to,
                value=0,
                data=data,
            )
            raw = self._gas.sign_eip1559(tx)
            try:
                sent = await self._chain.send_and_receipt(raw)
            except ReplyLost as exc:
                # the nonce may or may not be used now: re-read it next time
                with contextlib.suppress(StoreError):
                    await self._store.put(nonce_key, b"", 1)
                tx_hash = "0x" + keccak(raw).hex()
                raise SettlementInDoubt(f"transaction sent, reply lost ({exc})", None, tx_hash) from None
            except ChainError as exc:
                if attempt == 0 and _is_nonce_error(exc):
                    nonce = await self._chain.transaction_count(self._gas.address, "pending")
                    continue
                with contextlib.suppress(StoreError):
                    await self._store.put(nonce_key, b"", 1)  # forget the cache; re-read next time
                raise
            try:
                await self._store.put(nonce_key, str(nonce + 1).encode(), _NONCE_TTL)
            except StoreError:
                pass  # the transaction is out; the next send re-reads the nonce on conflict
            if sent[1] is not None:  # mined on arrival (else the waiter counts it: `wait_for_receipt`)
                metrics.GAS_SPENT.inc(sent[1].gas_wei)
            return sent
        raise ChainError("unreachable")  # pragma: no cover


class GasPool:
    """Several gas wallets behind `GasSender`'s interface: each send goes from a wallet that is
    free (no send of this process nor of any instance sharing the store holds it), trying them
    in turn from a rotating start; when none is, it queues on the one with the fewest sends of
    this process waiting.

    Each wallet keeps its own nonce sequence and store lock, so instances sharing the store
    never collide.

    Args:
        senders: one `GasSender` per wallet (at least one); the first is the pool's `address`
            (the ``from`` of simulations).
    """

    def __init__(self, senders: Sequence[GasSender]) -> None:
        if not senders:
            raise ValueError("a gas pool needs at least one wallet")
        self._senders = list(senders)
        self._turn = itertools.cycle(range(len(self._senders)))

    def __repr__(self) -> str:
        return f"GasPool({', '.join(s.address for s in self._senders)})"

    @property
    def senders(self) -> list[GasSender]:
        """The wallets' senders, in configuration order."""
        return list(self._senders)

    @property
    def address(self) -> ChecksumAddress:
        """The first wallet's address."""
        return self._senders[0].address

    async def fees(self) -> tuple[int, int]:
        """See `GasSender.fees` (the first wallet's cache; fees do not depend on the wallet)."""
        return await self._senders[0].fees()

    async def send(self, to: str, data: bytes, gas: int) -> tuple[str, Receipt | None]:
        """`GasSender.send` from a free wallet (see the class); raises as it does."""
        start = next(self._turn)
        order = self._senders[start:] + self._senders[:start]
        if len(order) > 1:
            for sender in order:
                if not sender.busy:
                    sent = await sender.try_send(to, data, gas)
                    if sent is not None:
                        return sent
        return await min(order, key=lambda s: s.waiting).send(to, data, gas)
