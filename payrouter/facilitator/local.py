"""Local facilitator: verify with coincurve and one batched RPC, settle from our gas wallet."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from payrouter import metrics
from payrouter.chain import (
    ChainClient,
    ChainError,
    RevertError,
    encode_authorization_state,
    encode_balance_of,
    encode_transfer_with_authorization,
)
from payrouter.facilitator.base import SettleResult
from payrouter.facilitator.onchain import find_settlement, has_transfer
from payrouter.facilitator.receipts import ReceiptWatcher
from payrouter.facilitator.sender import GasPool, GasSender
from payrouter.store.base import Store, StoreError
from payrouter.x402.errors import PaymentRejected, Reason, SettlementFailed, SettlementInDoubt
from payrouter.x402.requirements import Requirements
from payrouter.x402.wire import PaymentPayload
from wallets import Eip712Domain, SignatureError, TransactionSigner, recover_authorizer

__all__ = ["LocalFacilitator", "revert_reason"]

# Reference facilitators refuse an authorization that expires within 6 s: it could expire
# between verification and the block that includes the transfer.
VALID_BEFORE_MARGIN = 6
SETTLE_GAS_LIMIT = 200_000


def revert_reason(text: str) -> str:
    """Map an EIP-3009 revert text to the x402 reason (same table as the reference facilitators)."""
    msg = text.lower()
    if "authorization is expired" in msg:
        return Reason.VALID_BEFORE
    if "authorization is not yet valid" in msg:
        return Reason.VALID_AFTER
    if "authorization is used" in msg or "authorizationalreadyused" in msg:
        return Reason.NONCE_USED
    if "exceeds balance" in msg or "erc20insufficientbalance" in msg:
        return Reason.INSUFFICIENT_FUNDS
    if "invalid signature" in msg:
        return Reason.SIGNATURE
    return Reason.SIMULATION_FAILED


class LocalFacilitator:
    """`Facilitator` that talks to the chain itself.

    Args:
        chain: JSON-RPC client of the settlement chain.
        gas_wallet: pays gas for ``transferWithAuthorization`` (never receives payments).
        store: shared store; its lock serialises nonce use of each gas wallet across workers.
        more_gas_wallets: further gas wallets; a settlement is sent from whichever is free
            (`GasPool`), so settlements are not serialised on one wallet's nonce.
        receipt_timeout: seconds to wait for a settlement to be mined before answering
            ``settlement_pending``.
    """

    def __init__(
        self,
        chain: ChainClient,
        gas_wallet: TransactionSigner,
        store: Store,
        chain_id: int,
        receipt_timeout: float = 30.0,
        more_gas_wallets: Sequence[TransactionSigner] = (),
    ) -> None:
        self._chain = chain
        self._gas = gas_wallet
        self._receipt_timeout = receipt_timeout
        self._receipts = ReceiptWatcher(chain)
        self._pool = GasPool([GasSender(chain, w, store, chain_id) for w in (gas_wallet, *more_gas_wallets)])

    @property
    def sender(self) -> GasSender:
        """The first gas wallet's sender (share it to share its fee cache)."""
        return self._pool.senders[0]

    @property
    def gas_pool(self) -> GasPool:
        """Every gas wallet's sender; settlements go through it."""
        return self._pool

    async def close(self) -> None:
        await self._chain.close()

    def _check_fields(self, payment: PaymentPayload, req: Requirements) -> str:
        auth = payment.authorization
        if auth.to.lower() != req.pay_to.lower():
            raise PaymentRejected(Reason.RECIPIENT_MISMATCH, "authorization.to is not the payTo address", auth.from_)
        if auth.value != req.amount:
            raise PaymentRejected(
                Reason.VALUE_MISMATCH, f"authorization.value {auth.value} is not the quoted {req.amount}", auth.from_
            )
        now = int(time.time())
        if auth.valid_before < now + VALID_BEFORE_MARGIN:
            raise PaymentRejected(Reason.VALID_BEFORE, "authorization is expired or expires within 6 s", auth.from_)
        if auth.valid_after > now:
            raise PaymentRejected(Reason.VALID_AFTER, "authorization is not valid yet", auth.from_)
        name, version = req.extra.get("name"), req.extra.get("version")
        if not isinstance(name, str) or not isinstance(version, str):
            raise PaymentRejected(Reason.INVALID_REQUIREMENTS, "requirements lack extra.name / extra.version")
        if len(payment.signature) == 65:
            domain = Eip712Domain(name, version, req.chain_id, req.asset)
            try:
                signer = recover_authorizer(domain, auth, payment.signature)
            except SignatureError as exc:
                raise PaymentRejected(Reason.SIGNATURE, str(exc), auth.from_) from None
            if signer != auth.from_:
                raise PaymentRejected(Reason.SIGNATURE, "signature is not by authorization.from", auth.from_)
        # Longer signatures (EIP-1271 smart wallets) are checked by the token in the simulation.
        return auth.from_

    async def verify(self, payment: PaymentPayload, requirements: Requirements) -> str:
        payer = self._check_fields(payment, requirements)
        auth = payment.authorization
        asset = requirements.asset
        try:
            balance, used, simulated = await self._chain.batch(
                [
                    ("eth_call", [{"to": asset, "data": encode_balance_of(payer)}, "latest"]),
                    ("eth_call", [{"to": asset, "data": encode_authorization_state(payer, auth.nonce)}, "latest"]),
                    (
                        "eth_call",
                        [
                            {
                                "from": self._gas.address,
                                "to": asset,
                                # with the gas the settlement will have: a contract wallet that
                                # approves only with more gas must fail here, not on chain
                                "gas": hex(SETTLE_GAS_LIMIT),
                                "data": encode_transfer_with_authorization(auth, payment.signature),
                            },
                            "latest",
                        ],
                    ),
                ]
            )
        except ChainError as exc:
            raise PaymentRejected(Reason.UNEXPECTED_VERIFY, f"chain unavailable: {exc}", payer) from None
        if isinstance(used, str) and int(used, 16) != 0:
            raise PaymentRejected(Reason.NONCE_USED, "this authorization was already used or canceled", payer)
        if isinstance(balance, str) and int(balance, 16) < auth.value:
            raise PaymentRejected(
                Reason.INSUFFICIENT_FUNDS, f"payer balance {int(balance, 16)} is below {auth.value}", payer
            )
        if isinstance(simulated, RevertError):
            raise PaymentRejected(revert_reason(simulated.reason), f"simulation reverted: {simulated.reason}", payer)
        for result in (balance, used, simulated):
            if isinstance(result, ChainError):
                raise PaymentRejected(Reason.UNEXPECTED_VERIFY, f"chain error: {result}", payer)
        return payer

    async def settle(self, payment: PaymentPayload, requirements: Requirements) -> SettleResult:
        auth = payment.authorization
        network = requirements.network
        data = bytes.fromhex(encode_transfer_with_authorization(auth, payment.signature)[2:])
        try:
            tx_hash, receipt = await self._pool.send(requirements.asset, data, SETTLE_GAS_LIMIT)
        except SettlementInDoubt as exc:
            raise SettlementInDoubt(exc.message, auth.from_, exc.transaction) from None
        except (ChainError, StoreError) as exc:
            raise SettlementFailed(Reason.UNEXPECTED_SETTLE, f"not broadcast: {exc}", auth.from_) from None
        if receipt is None:
            try:
                receipt = await self._receipts.wait(tx_hash, self._receipt_timeout)
            except ChainError as exc:
                raise SettlementInDoubt(f"transaction sent, receipt unavailable ({exc})", auth.from_, tx_hash) from None
            if receipt is not None:
                metrics.GAS_SPENT.inc(receipt.gas_wei)
        if receipt is None:
            raise SettlementInDoubt("transaction sent but not mined in time", auth.from_, tx_hash)
        if receipt.status == 1 and has_transfer(receipt, payment, requirements):
            return SettleResult(transaction=tx_hash, payer=auth.from_, network=network)
        # Anyone may submit a signed authorization: if someone beat us to it, the money still
        # went to payTo, and the payment stands.
        try:
            front_run = await find_settlement(self._chain, payment, requirements)
        except ChainError as exc:
            # reverted, and whether another transaction moved the money is unknown
            raise SettlementInDoubt(f"reverted; the chain could not be searched ({exc})", auth.from_, tx_hash) from None
        if front_run is not None:
            return SettleResult(transaction=front_run, payer=auth.from_, network=network)
        raise SettlementFailed(Reason.TRANSACTION_FAILED, "transferWithAuthorization reverted", auth.from_, tx_hash)


async def wait_until_deployed(chain: ChainClient, asset: str, attempts: int = 20) -> None:
    """Raise ChainError unless ``asset`` has code (fail fast on a misconfigured price table)."""
    for _ in range(attempts):
        if (await chain.get_code(asset)) not in ("0x", "0x0", None):
            return
        await asyncio.sleep(0.05)
    raise ChainError(f"asset {asset} has no contract code on {chain.rpc_url}")
