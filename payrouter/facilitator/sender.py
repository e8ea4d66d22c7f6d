"""Sending transactions from the operator's gas wallet, one nonce at a time across workers."""

from __future__ import annotations

import contextlib
import time

from eth_typing import ChecksumAddress
from eth_utils.crypto import keccak

from payrouter.chain import ChainClient, ChainError, Receipt, ReplyLost
from payrouter.store import keys
from payrouter.store.base import Store, StoreError
from payrouter.x402.errors import SettlementInDoubt
from wallets import Eip1559Transaction, TransactionSigner

__all__ = ["GasSender"]

# Fees are re-read at most this often: one RPC per transaction is a noticeable share of a
# settlement, and a 10 s old base fee is covered by the 2x head room of ``fee_per_gas``.
_FEE_TTL = 10.0
# A cached gas-wallet nonce expires after a quiet hour, so a wallet also used elsewhere
# re-reads the chain now and then.
_NONCE_TTL = 3600
_LOCK_TIMEOUT = 10.0


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

    def __repr__(self) -> str:
        return f"GasSender(address={self._gas.address}, chain_id={self._chain_id})"

    @property
    def address(self) -> ChecksumAddress:
        """The gas wallet's address (the ``from`` of every transaction sent)."""
        return self._gas.address

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
        max_fee, tip = await self.fees()
        nonce_key = keys.gas_nonce(self._chain_id, self._gas.address)
        async with self._store.lock(nonce_key, timeout_seconds=_LOCK_TIMEOUT):
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
                return sent
        raise ChainError("unreachable")  # pragma: no cover
