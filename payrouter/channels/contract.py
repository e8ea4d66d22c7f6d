"""The x402 ``BatchSettlement`` contract, driven over raw JSON-RPC.

Reads go through `ChainClient` (JSON-RPC batches: one round trip per channel, or per chunk of
channels); writes are signed by the operator's gas wallet through `GasSender`, whose nonce lock
they share with ``exact`` settlements. Every write is simulated first (``eth_estimateGas``,
which also sizes its gas), so a transaction that would revert is refused before it costs gas,
with the contract's custom error decoded into the exception.

Calldata is ABI-encoded with eth_abi from literal type strings; tests pin the selectors to the
committed contract artifact.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode
from eth_utils.crypto import keccak

from payrouter import metrics
from payrouter.chain import AUTHORIZATION_USED_TOPIC, ChainClient, ChainError, Receipt, RevertError
from payrouter.facilitator.sender import GasSender
from payrouter.x402.errors import SettlementInDoubt
from wallets import Signer
from wallets.channels import (
    BATCH_SETTLEMENT_ADDRESS,
    ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
    ChannelConfig,
    ClaimBatch,
    ClaimEntry,
    Refund,
    batch_settlement_domain,
    deposit_nonce,
)

__all__ = [
    "DROPPED_AFTER_MS",
    "MAX_CLAIMS_PER_BATCH",
    "BatchSettlementContract",
    "ChannelError",
    "ChannelTxFailed",
    "ChannelTxInDoubt",
    "ChannelUnavailable",
    "ClaimRow",
    "ClaimRowLike",
    "Erc3009Deposit",
    "Erc3009Like",
    "OnchainChannel",
    "RefundResult",
    "check_claim_rows",
    "collector_data",
    "decode_revert",
    "word",
]

# A transaction in doubt the node still does not know after this long was dropped unmined
# (a claim, a settle, a refund: what waited for it stops waiting).
DROPPED_AFTER_MS = 3600_000

# The SDK facilitators claim at most 100 channels per transaction; so do we (gas stays well
# under a block, and one bad row reverts no more than 100).
MAX_CLAIMS_PER_BATCH = 100
# Reads of many channels go out 3 calls per channel, this many channels per JSON-RPC batch:
# big enough to amortise the round trip, small enough for nodes that cap batch sizes.
_READ_CHUNK = 50
# A deposit or refund whose answer was lost is looked for this many blocks back, at once: it
# was sent moments ago (16 minutes at 1 s blocks), and one eth_getLogs over it stays within the
# block-range caps of public nodes.
_LOST_ANSWER_LOOKBACK = 1_000

_CC = "(address,address,address,address,address,uint40,bytes32)"
_VC = f"(({_CC},uint128),bytes,uint128)"


def _selector(signature: str) -> bytes:
    return keccak(text=signature)[:4]


# name -> (selector, argument types)
_FUNCTIONS: dict[str, tuple[bytes, list[str]]] = {
    name: (_selector(f"{name}({','.join(types)})"), types)
    for name, types in (
        ("deposit", [_CC, "uint128", "address", "bytes"]),
        ("claimWithSignature", [f"{_VC}[]", "bytes"]),
        ("settle", ["address", "address"]),
        ("refundWithSignature", [_CC, "uint128", "uint256", "bytes"]),
        ("multicall", ["bytes[]"]),
        ("channels", ["bytes32"]),
        ("pendingWithdrawals", ["bytes32"]),
        ("refundNonce", ["bytes32"]),
        ("receivers", ["address", "address"]),
    )
}

SETTLED_TOPIC = "0x" + keccak(text="Settled(address,address,address,uint128)").hex()
DEPOSITED_TOPIC = "0x" + keccak(text="Deposited(bytes32,address,address,uint128)").hex()
CLAIMED_TOPIC = "0x" + keccak(text="Claimed(bytes32,address,uint128,uint128)").hex()
REFUNDED_TOPIC = "0x" + keccak(text="Refunded(bytes32,address,uint256,uint128)").hex()
WITHDRAW_FINALIZED_TOPIC = "0x" + keccak(text="WithdrawFinalized(bytes32,address,uint128)").hex()

# Custom errors a write can revert with: the contract's own, its collector's, and the
# OpenZeppelin ones the token and SafeERC20 raise. name, argument names and types.
_ERRORS: list[tuple[str, list[tuple[str, str]]]] = [
    ("InvalidChannelConfig", []),
    ("InvalidWithdrawDelay", [("withdrawDelay", "uint40")]),
    ("ZeroAmount", []),
    ("InvalidCollector", []),
    ("DepositShortfall", [("expected", "uint256"), ("received", "uint256")]),
    ("EmptyBatch", []),
    ("MixedReceiverAuthorizers", []),
    ("InvalidAuthorizerSignature", []),
    ("InvalidVoucherSignature", [("channelId", "bytes32")]),
    ("ClaimAboveVoucher", [("channelId", "bytes32"), ("totalClaimed", "uint128"), ("maxClaimableAmount", "uint128")]),
    ("ClaimAboveBalance", [("channelId", "bytes32"), ("totalClaimed", "uint128"), ("balance", "uint128")]),
    ("NotReceiver", []),
    ("NotPayer", []),
    ("AmountAboveAvailable", [("amount", "uint128"), ("available", "uint128")]),
    ("WithdrawPending", []),
    ("NoPendingWithdraw", []),
    ("WithdrawDelayNotElapsed", [("readyAt", "uint256")]),
    ("InvalidRefundNonce", [("expected", "uint256"), ("given", "uint256")]),
    ("OnlySettlement", []),
    ("ReentrancyGuardReentrantCall", []),
    ("SafeERC20FailedOperation", [("token", "address")]),
    ("ERC20InsufficientBalance", [("sender", "address"), ("balance", "uint256"), ("needed", "uint256")]),
    ("ECDSAInvalidSignature", []),
    ("ECDSAInvalidSignatureLength", [("length", "uint256")]),
    ("ECDSAInvalidSignatureS", [("s", "bytes32")]),
    ("FailedCall", []),
    ("AddressEmptyCode", [("target", "address")]),
    ("ERC20InvalidReceiver", [("receiver", "address")]),
]
_ERROR_BY_SELECTOR = {_selector(f"{name}({','.join(t for _, t in args)})"): (name, args) for name, args in _ERRORS}
_CUSTOM_ERROR = re.compile(r"custom error (0x[0-9a-fA-F]{8})(?::\s?(.*))?", re.DOTALL)


class ChannelError(RuntimeError):
    """A channel transaction did not (certainly) do what was asked.

    Attributes:
        reason: readable cause, e.g. ``ClaimAboveBalance(channelId=0x…, totalClaimed=7, balance=5)``.
        tx: the transaction hash, or ``""`` when nothing was sent.
    """

    def __init__(self, reason: str, tx: str = "") -> None:
        super().__init__(f"{reason} (tx {tx})" if tx else reason)
        self.reason = reason
        self.tx = tx


class ChannelTxFailed(ChannelError):
    """The call reverted: in simulation (``tx == ""``, nothing sent, no gas spent) or on chain.

    Attributes:
        error: the custom error's name (``"ClaimAboveBalance"``) when it was recognised, else None.
        code: the x402 reason a facilitator refused it with (``"invalid_batch_settlement_…"``),
            else None.
    """

    def __init__(self, reason: str, tx: str = "", error: str | None = None, code: str | None = None) -> None:
        super().__init__(reason, tx)
        self.error = error
        self.code = code


class ChannelUnavailable(ChannelTxFailed):
    """Nothing was sent, and asking again now would not help: the sender (a remote
    facilitator) could not be reached, or refused for a reason of its own rather than the
    transaction's (no authorizer key, a chain read failed). Try again later; do not split or
    drop the rows."""


class ChannelTxInDoubt(ChannelError):
    """Sent, outcome unknown (reply lost, or not mined in time): it may still take effect.

    ``tx`` is the hash to watch; never treat this as "nothing happened".
    """


def _data_from_message(message: str) -> bytes | None:
    # anvil writes the revert data into the message as characters: "custom error 0x<selector>:
    # <raw args>", or (when the selector happens to be valid UTF-8, e.g. through multicall) the
    # raw bytes alone. Bytes above 0x7f arrive lossy, so latin-1 re-encoding is exact only when
    # it succeeds; a wrong guess cannot match a known selector with well-formed arguments.
    match = _CUSTOM_ERROR.search(message)
    if match is not None:
        data = bytes.fromhex(match.group(1)[2:])
        try:
            return data + (match.group(2) or "").encode("latin-1")
        except UnicodeEncodeError:
            return data
    try:
        return message.encode("latin-1")
    except UnicodeEncodeError:
        return None


def decode_revert(exc: RevertError) -> tuple[str, str | None]:
    """Turn a reverted call into ``(readable reason, custom error name or None)``.

    Uses the raw revert data when the `RevertError` carries it (``data`` attribute), else the
    node's message (anvil: ``custom error 0x<selector>: <raw bytes>``); arguments that cannot
    be recovered exactly are left out rather than guessed.
    """
    raw = getattr(exc, "data", None)
    data: bytes | None = None
    if isinstance(raw, bytes):
        data = raw
    elif isinstance(raw, str) and raw.startswith("0x"):
        try:
            data = bytes.fromhex(raw[2:])
        except ValueError:
            data = None
    if data is None:
        data = _data_from_message(exc.reason)
    if data is None:
        return exc.reason, None
    known = _ERROR_BY_SELECTOR.get(data[:4])
    if known is None:
        return exc.reason, None
    name, args = known
    if len(data) != 4 + 32 * len(args):  # every known error has static arguments only
        return f"{name}(…)" if args else f"{name}()", name
    try:
        values = abi_decode([t for _, t in args], data[4:]) if args else ()
    except Exception:  # malformed arguments (dirty padding): the name alone is still exact
        return f"{name}(…)", name
    shown = ", ".join(
        f"{n}={'0x' + v.hex() if isinstance(v, bytes) else v}" for (n, _), v in zip(args, values, strict=True)
    )
    return f"{name}({shown})", name


@dataclass(frozen=True, slots=True)
class OnchainChannel:
    """A channel as the contract holds it (all amounts in atomic token units).

    Attributes:
        balance: deposited minus returned to the payer; claims do not lower it.
        total_claimed: the receiver's cumulative claimed share of ``balance``.
        withdraw_amount: the payer's pending withdrawal (0 when none).
        withdraw_initiated_at: unix time it was initiated (0 when none).
        refund_nonce: the nonce the next signed refund must carry.
    """

    balance: int
    total_claimed: int
    withdraw_amount: int
    withdraw_initiated_at: int
    refund_nonce: int

    @property
    def available(self) -> int:
        """What a refund or withdrawal could return now: ``balance - total_claimed``."""
        return self.balance - self.total_claimed


@dataclass(frozen=True, slots=True)
class RefundResult:
    """A mined refund, as its receipt's events tell it.

    Attributes:
        tx: the transaction.
        refunded: returned to the payer (``Refunded``).
        claimed: channel id -> ``(totalClaimed, delta)`` claimed in the same transaction
            (``Claimed``; a row the chain skipped, because a claim got there first, is absent).
    """

    tx: str
    refunded: int
    claimed: dict[str, tuple[int, int]]


class Erc3009Deposit(NamedTuple):
    """The payer's ERC-3009 ``ReceiveWithAuthorization`` behind a deposit (a plain 4-tuple works too).

    The authorization is ``to`` = `ERC3009_DEPOSIT_COLLECTOR_ADDRESS`, ``value`` = the deposit,
    ``nonce`` = ``deposit_nonce(channel_id, salt)``, signed in the token's domain.
    """

    valid_after: int
    valid_before: int
    salt: int
    signature: bytes


class ClaimRow(NamedTuple):
    """One channel of a claim (a plain 4-tuple works too): raise its ``totalClaimed`` to
    ``total_claimed`` on the payer's voucher.

    Attributes:
        config: the channel.
        signed_max: the voucher's ``maxClaimableAmount``.
        voucher_signature: the payer side's signature over ``Voucher(channelId, signed_max)``.
        total_claimed: the new cumulative claim (≤ ``signed_max`` and ≤ the channel's balance;
            at or below the current onchain total the contract skips the row).
    """

    config: ChannelConfig
    signed_max: int
    voucher_signature: bytes
    total_claimed: int


ClaimRowLike = tuple[ChannelConfig, int, bytes, int]
Erc3009Like = tuple[int, int, int, bytes]


def check_claim_rows(rows: Sequence[ClaimRowLike], authorizer: str, most: int) -> None:
    """Refuse a claim batch ``claimWithSignature`` cannot take as one transaction.

    Raises:
        ValueError: no rows, more than ``most``, or a row whose receiverAuthorizer is not
            ``authorizer`` (the contract checks one shared authorizer against the batch signature).
    """
    if not rows:
        raise ValueError("a claim needs at least one row")
    if len(rows) > most:
        raise ValueError(f"{len(rows)} claim rows; at most {most} per transaction")
    if any(config.receiver_authorizer != authorizer for config, *_ in rows):
        raise ValueError("every claimed channel's receiverAuthorizer must be the signing authorizer")


def collector_data(erc3009: Erc3009Like) -> bytes:
    """``abi.encode(validAfter, validBefore, salt, signature)``, what the ERC-3009 collector decodes."""
    valid_after, valid_before, salt, signature = erc3009
    return abi_encode(["uint256", "uint256", "uint256", "bytes"], [valid_after, valid_before, salt, signature])


def _config_tuple(config: ChannelConfig) -> tuple[Any, ...]:
    return (
        config.payer,
        config.payer_authorizer,
        config.receiver,
        config.receiver_authorizer,
        config.token,
        config.withdraw_delay,
        config.salt,
    )


def _calldata(function: str, args: list[Any]) -> bytes:
    selector, types = _FUNCTIONS[function]
    return selector + abi_encode(types, args)


def _hex(data: bytes) -> str:
    return "0x" + data.hex()


def word(value: Any, index: int) -> int:
    """The ``index``-th 32-byte word of ``value`` (an ``eth_call`` result or a log's data).

    Raises:
        ChainError: ``value`` is an error, not hex text, or too short.
    """
    if isinstance(value, ChainError):
        raise value
    if not isinstance(value, str):
        raise ChainError("eth_call answered with a non-string")
    raw = bytes.fromhex(value.removeprefix("0x"))
    if len(raw) < 32 * (index + 1):
        raise ChainError("eth_call answered too few bytes (no contract at the address?)")
    return int.from_bytes(raw[32 * index : 32 * (index + 1)], "big")


def _gas_limit(estimate: int) -> int:
    # head room over the estimate: state may move between simulation and inclusion (a claim
    # row that was skipped in simulation can become a real one)
    return estimate * 5 // 4 + 25_000


class BatchSettlementContract:
    """Reads and writes of the batch-settlement contract.

    Args:
        chain: JSON-RPC client of the chain.
        sender: the gas wallet's sender; None for a read-only instance (writes raise RuntimeError).
        chain_id: EVM chain id (binds channel ids and signatures).
        address: the contract (the canonical deployment by default; clients hard-code it).
            Channel ids and signatures are always made in the canonical domain
            (`wallets.batch_settlement_domain`), so another address only suits a contract
            that was installed there (anvil ``setCode``) or read-only use.
        receipt_timeout: seconds a write waits for its receipt before `ChannelTxInDoubt`.

    Write methods raise:
        ChannelTxFailed: it reverts (in simulation: nothing sent; or on chain, with ``tx``).
        ChannelTxInDoubt: sent, and its outcome is unknown.
        ChainError, StoreError: the node or the nonce store could not be used; nothing sent.
    """

    def __init__(
        self,
        chain: ChainClient,
        sender: GasSender | None,
        chain_id: int,
        address: str = BATCH_SETTLEMENT_ADDRESS,
        receipt_timeout: float = 30.0,
    ) -> None:
        self._chain = chain
        self._sender = sender
        self.chain_id = chain_id
        self.address = address
        self._receipt_timeout = receipt_timeout
        self._domain = batch_settlement_domain(chain_id)

    def __repr__(self) -> str:
        return f"BatchSettlementContract(address={self.address}, chain_id={self.chain_id})"

    # ------------------------------------------------------------------ reads

    def _read(self, function: str, args: list[Any]) -> tuple[str, list[Any]]:
        return ("eth_call", [{"to": self.address, "data": _hex(_calldata(function, args))}, "latest"])

    def _channel_reads(self, channel_id: bytes) -> list[tuple[str, list[Any]]]:
        return [self._read(f, [channel_id]) for f in ("channels", "pendingWithdrawals", "refundNonce")]

    @staticmethod
    def _channel_from(results: Sequence[Any]) -> OnchainChannel:
        state, pending, nonce = results
        return OnchainChannel(
            balance=word(state, 0),
            total_claimed=word(state, 1),
            withdraw_amount=word(pending, 0),
            withdraw_initiated_at=word(pending, 1),
            refund_nonce=word(nonce, 0),
        )

    async def channel(self, channel_id: bytes) -> OnchainChannel:
        """The channel's onchain state, in one JSON-RPC batch (all zero when it never existed).

        Raises:
            ChainError: the node failed or answered malformed data.
        """
        return self._channel_from(await self._chain.batch(self._channel_reads(channel_id)))

    async def channels(self, channel_ids: Sequence[bytes]) -> dict[bytes, OnchainChannel]:
        """The state of many channels, ``_READ_CHUNK`` channels per JSON-RPC batch.

        Raises:
            ChainError: the node failed or answered malformed data (for any of them).
        """
        unique = list(dict.fromkeys(channel_ids))
        out: dict[bytes, OnchainChannel] = {}
        for start in range(0, len(unique), _READ_CHUNK):
            chunk = unique[start : start + _READ_CHUNK]
            calls = [call for cid in chunk for call in self._channel_reads(cid)]
            results = await self._chain.batch(calls)
            for i, cid in enumerate(chunk):
                out[cid] = self._channel_from(results[3 * i : 3 * i + 3])
        return out

    async def receiver_totals(self, receiver: str, token: str) -> tuple[int, int]:
        """``(totalClaimed, totalSettled)`` of ``receiver`` in ``token``: ``settle`` pays the difference.

        Raises:
            ChainError: the node failed or answered malformed data.
        """
        (result,) = await self._chain.batch([self._read("receivers", [receiver, token])])
        return word(result, 0), word(result, 1)

    # ----------------------------------------------------------------- writes

    def _deposit_calldata(self, config: ChannelConfig, amount: int, erc3009: Erc3009Like) -> bytes:
        return _calldata(
            "deposit", [_config_tuple(config), amount, ERC3009_DEPOSIT_COLLECTOR_ADDRESS, collector_data(erc3009)]
        )

    async def simulate_deposit(self, config: ChannelConfig, amount: int, erc3009: Erc3009Like) -> None:
        """Run the deposit as an ``eth_call`` (from the gas wallet when there is one).

        Raises:
            ChannelTxFailed: it would revert (``tx == ""``); ``reason`` names the contract's or
                the token's error.
            ChainError: the node could not be asked.
        """
        call: dict[str, str] = {"to": self.address, "data": _hex(self._deposit_calldata(config, amount, erc3009))}
        if self._sender is not None:
            call["from"] = self._sender.address
        try:
            await self._chain.call("eth_call", [call, "latest"])
        except RevertError as exc:
            reason, error = decode_revert(exc)
            raise ChannelTxFailed(reason, "", error) from None

    async def deposit(self, config: ChannelConfig, amount: int, erc3009: Erc3009Like) -> str:
        """Deposit ``amount`` into the channel through the ERC-3009 collector; wait until mined.

        Returns:
            The transaction hash (status 1).

        Raises:
            ChannelTxFailed, ChannelTxInDoubt, ChainError, StoreError: see the class.
        """
        receipt = await self._transact(self._deposit_calldata(config, amount, erc3009))
        return receipt.transaction_hash

    def _claim_calldata(self, rows: Sequence[ClaimRowLike], authorizer: Signer) -> bytes:
        check_claim_rows(rows, authorizer.address, MAX_CLAIMS_PER_BATCH)
        claims = [((_config_tuple(c), signed_max), sig, total) for c, signed_max, sig, total in rows]
        return _calldata("claimWithSignature", [claims, self.claim_signature(rows, authorizer)])

    def claim_signature(self, rows: Sequence[ClaimRowLike], authorizer: Signer) -> bytes:
        """``authorizer``'s ``ClaimBatch`` signature over ``rows`` (what ``claimWithSignature`` checks).

        Raises:
            wallets.TypedDataError: an amount outside uint128.
        """
        entries = tuple(ClaimEntry(c.channel_id(self.chain_id), signed_max, total) for c, signed_max, _, total in rows)
        return authorizer.sign_typed_data(self._domain, ClaimBatch(entries))

    def refund_signature(self, config: ChannelConfig, amount: int, nonce: int, authorizer: Signer) -> bytes:
        """``authorizer``'s ``Refund`` signature (what ``refundWithSignature`` checks)."""
        return authorizer.sign_typed_data(self._domain, Refund(config.channel_id(self.chain_id), nonce, amount))

    async def claim_with_signature(self, rows: Sequence[ClaimRowLike], authorizer: Signer) -> str:
        """Claim up to 100 channels in one transaction on ``authorizer``'s ``ClaimBatch`` signature.

        Rows at or below a channel's onchain ``totalClaimed`` are skipped by the contract; any
        other invalid row (above its voucher or the balance, bad voucher signature) reverts the
        whole batch, which the simulation reports before anything is sent.

        Returns:
            The transaction hash (status 1).

        Raises:
            ValueError: no rows, more than 100, a row whose receiverAuthorizer is not
                ``authorizer``, or an amount outside uint128 (`wallets.TypedDataError`).
            ChannelTxFailed, ChannelTxInDoubt, ChainError, StoreError: see the class.
        """
        receipt = await self._transact(self._claim_calldata(rows, authorizer))
        return receipt.transaction_hash

    async def settle(self, receiver: str, token: str) -> tuple[str, int]:
        """Pay ``receiver`` what it claimed in ``token`` and was not paid yet.

        Returns:
            ``(transaction hash, amount paid)`` with the amount from the ``Settled`` event;
            ``("", 0)`` without a transaction when nothing is owed. A settle that someone
            else's transaction beat returns its own hash and 0.

        Raises:
            ChannelTxFailed, ChannelTxInDoubt, ChainError, StoreError: see the class.
        """
        claimed, settled = await self.receiver_totals(receiver, token)
        if claimed == settled:
            return "", 0
        receipt = await self._transact(_calldata("settle", [receiver, token]))
        return receipt.transaction_hash, self.settled_in(receipt, receiver)

    def settled_in(self, receipt: Receipt, receiver: str) -> int:
        """What ``receipt``'s ``Settled`` events paid ``receiver``."""
        amount = 0
        for log in self._logs(receipt, SETTLED_TOPIC):
            topics = log.get("topics") or []
            if len(topics) > 1 and int(topics[1], 16) == int(receiver, 16):
                amount += int(str(log.get("data", "0x0")), 16)
        return amount

    def claimed_in(self, receipt: Receipt, receiver: str) -> dict[str, tuple[int, int]]:
        """What ``receipt``'s ``Claimed`` events claimed for ``receiver``: channel id (``0x``
        lower-case hex) -> ``(totalClaimed, delta)``."""
        out: dict[str, tuple[int, int]] = {}
        for log in self._logs(receipt, CLAIMED_TOPIC):
            topics = log.get("topics") or []
            if len(topics) > 2 and int(topics[2], 16) == int(receiver, 16):
                out[str(topics[1]).lower()] = (word(log.get("data"), 0), word(log.get("data"), 1))
        return out

    def deposited_in(self, receipt: Receipt, channel_id: bytes) -> int:
        """What ``receipt``'s ``Deposited`` events put into ``channel_id``."""
        return sum(
            word(log.get("data"), 0)
            for log in self._logs(receipt, DEPOSITED_TOPIC)
            if len(log.get("topics") or []) > 1 and bytes.fromhex(str(log["topics"][1])[2:]) == channel_id
        )

    def took_deposit(self, receipt: Receipt, config: ChannelConfig, amount: int, salt: int) -> bool:
        """Whether ``receipt`` is this deposit: the payer's ERC-3009 authorization of nonce
        ``deposit_nonce(channel, salt)`` used on the token, and ``amount`` into the channel."""
        channel_id = config.channel_id(self.chain_id)
        want = self._authorization_topics(config, salt)
        used = any(
            str(log.get("address", "")).lower() == config.token.lower()
            and [str(t).lower() for t in log.get("topics") or []] == want
            for log in receipt.logs
        )
        return used and self.deposited_in(receipt, channel_id) == amount

    def _authorization_topics(self, config: ChannelConfig, salt: int) -> list[str]:
        """The token's ``AuthorizationUsed`` topics of the payer's deposit authorization."""
        nonce = deposit_nonce(config.channel_id(self.chain_id), salt)
        return [AUTHORIZATION_USED_TOPIC, "0x" + "0" * 24 + config.payer[2:].lower(), "0x" + nonce.hex()]

    async def find_deposit(
        self, config: ChannelConfig, amount: int, salt: int, lookback: int = _LOST_ANSWER_LOOKBACK
    ) -> str | None:
        """The mined transaction that took this deposit, if one did within ``lookback`` blocks:
        its ERC-3009 nonce used on the token (``AuthorizationUsed``), by a transaction that
        put ``amount`` into the channel (``Deposited``). For a deposit whose sender's answer
        was lost.

        Raises:
            ChainError: the node failed.
        """
        head = int(await self._chain.call("eth_blockNumber", []), 16)
        topics = self._authorization_topics(config, salt)
        for entry in await self._chain.get_logs(config.token, topics, max(head - lookback, 0)):
            receipt = await self._chain.receipt(str(entry["transactionHash"]))
            if receipt is not None and receipt.status == 1 and self.took_deposit(receipt, config, amount, salt):
                return receipt.transaction_hash
        return None

    async def find_refund(
        self, config: ChannelConfig, nonce: int, lookback: int = _LOST_ANSWER_LOOKBACK
    ) -> RefundResult | None:
        """The mined refund of ``config``'s channel that spent ``nonce``, if one did within
        ``lookback`` blocks (for a refund whose sender's answer was lost); None if none did.

        Raises:
            ChainError: the node failed.
        """
        channel_id = config.channel_id(self.chain_id)
        head = int(await self._chain.call("eth_blockNumber", []), 16)
        topics = [REFUNDED_TOPIC, "0x" + channel_id.hex()]
        for entry in await self._chain.get_logs(self.address, topics, max(head - lookback, 0)):
            if word(entry.get("data"), 0) != nonce:
                continue
            receipt = await self._chain.receipt(str(entry["transactionHash"]))
            refunded = self.refund_of(receipt, channel_id, nonce) if receipt is not None else None
            if receipt is not None and receipt.status == 1 and refunded is not None:
                return RefundResult(receipt.transaction_hash, refunded, self.claimed_in(receipt, config.receiver))
        return None

    async def receipt(self, tx: str) -> Receipt | None:
        """The receipt of ``tx`` (None while it is not mined).

        Raises:
            ChainError: the node failed.
        """
        return await self._chain.receipt(tx)

    def refund_of(self, receipt: Receipt, channel_id: bytes, nonce: int) -> int | None:
        """What ``receipt`` refunded from ``channel_id`` under refund ``nonce`` (its
        ``Refunded`` event), or None when it holds no such refund."""
        for log in self._logs(receipt, REFUNDED_TOPIC):
            topics = log.get("topics") or []
            if len(topics) > 1 and bytes.fromhex(str(topics[1])[2:]) == channel_id:
                if word(log.get("data"), 0) == nonce:
                    return word(log.get("data"), 1)
        return None

    def refunded_in(self, receipt: Receipt, channel_id: bytes) -> int:
        """What ``receipt``'s ``Refunded`` events returned to the payer of ``channel_id``."""
        refunded = 0
        for log in self._logs(receipt, REFUNDED_TOPIC):
            topics = log.get("topics") or []
            if len(topics) > 1 and bytes.fromhex(str(topics[1])[2:]) == channel_id:
                refunded += word(log.get("data"), 1)
        return refunded

    async def refund(
        self,
        config: ChannelConfig,
        amount: int,
        nonce: int,
        claim_rows: Sequence[ClaimRowLike],
        authorizer: Signer,
    ) -> RefundResult:
        """Claim ``claim_rows`` (if any) and refund up to ``amount`` to the payer, atomically.

        One ``multicall([claimWithSignature(rows), refundWithSignature(config, amount, nonce)])``,
        both signed by ``authorizer`` (the channel's receiverAuthorizer). The contract caps the
        refund at ``balance - totalClaimed`` after the claim, and spends ``nonce`` even when
        that cap is 0.

        Returns:
            The transaction, what its ``Refunded`` event returned (0 without one) and what its
            ``Claimed`` events claimed for the channel's receiver.

        Raises:
            ValueError: ``amount`` is 0 (the contract would revert), or the authorizer is not
                the channel's, or the claim rows are invalid as in `claim_with_signature`.
            ChannelTxFailed: e.g. ``InvalidRefundNonce`` when ``nonce`` is not the channel's.
            ChannelTxInDoubt, ChainError, StoreError: see the class.
        """
        if amount <= 0:
            raise ValueError("a refund amount must be positive")
        if config.receiver_authorizer != authorizer.address:
            raise ValueError("the refund must be signed by the channel's receiverAuthorizer")
        refund_signature = self.refund_signature(config, amount, nonce, authorizer)
        calls = [self._claim_calldata(claim_rows, authorizer)] if claim_rows else []
        calls.append(_calldata("refundWithSignature", [_config_tuple(config), amount, nonce, refund_signature]))
        receipt = await self._transact(_calldata("multicall", [calls]))
        refunded = self.refunded_in(receipt, config.channel_id(self.chain_id))
        return RefundResult(receipt.transaction_hash, refunded, self.claimed_in(receipt, config.receiver))

    # --------------------------------------------------------------- plumbing

    def _logs(self, receipt: Receipt, topic: str) -> list[dict[str, Any]]:
        return [
            log
            for log in receipt.logs
            if str(log.get("address", "")).lower() == self.address.lower() and (log.get("topics") or [None])[0] == topic
        ]

    async def _transact(self, data: bytes) -> Receipt:
        """Simulate (``eth_estimateGas``, which sizes the gas), send, and wait for the receipt."""
        if self._sender is None:
            raise RuntimeError("this BatchSettlementContract is read-only (no gas sender)")
        try:
            estimate = await self._chain.call(
                "eth_estimateGas", [{"from": self._sender.address, "to": self.address, "data": _hex(data)}]
            )
        except RevertError as exc:
            reason, error = decode_revert(exc)
            raise ChannelTxFailed(reason, "", error) from None
        try:
            tx_hash, receipt = await self._sender.send(self.address, data, _gas_limit(int(estimate, 16)))
        except SettlementInDoubt as exc:
            raise ChannelTxInDoubt(exc.message, exc.transaction) from None
        if receipt is None:
            try:
                receipt = await self._chain.wait_for_receipt(tx_hash, self._receipt_timeout)
            except ChainError as exc:
                raise ChannelTxInDoubt(f"sent, receipt unavailable ({exc})", tx_hash) from None
            if receipt is not None:
                metrics.GAS_SPENT.inc(receipt.gas_wei)
        if receipt is None:
            raise ChannelTxInDoubt("sent, not mined in time", tx_hash)
        if receipt.status != 1:
            raise ChannelTxFailed(await self._replay_reason(data), tx_hash)
        return receipt

    async def _replay_reason(self, data: bytes) -> str:
        # a mined revert carries no reason: re-run the call on the current state for a hint
        try:
            await self._chain.call("eth_call", [{"to": self.address, "data": _hex(data)}, "latest"])
        except RevertError as exc:
            return "reverted on chain: " + decode_revert(exc)[0]
        except ChainError:
            pass
        return "reverted on chain"
