"""An async JSON-RPC client for the few EVM calls the paid path makes.

Raw JSON-RPC over keep-alive aiohttp connections (`payrouter.http_client`): web3's default
provider makes three HTTP requests per ``eth_call`` (~4.5 ms against anvil); this makes one.
Calls that verification needs together go out as one JSON-RPC batch.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import aiohttp
from eth_abi.abi import decode as abi_decode
from eth_utils.crypto import keccak
from pydantic_core import to_json

from payrouter.http_client import env_proxy, new_session
from wallets import TransferWithAuthorization

__all__ = [
    "ChainClient",
    "ChainError",
    "Receipt",
    "ReplyLost",
    "RevertError",
    "Topic",
    "encode_authorization_state",
    "encode_balance_of",
    "encode_transfer_with_authorization",
]


def _selector(signature: str) -> bytes:
    return keccak(text=signature)[:4]


_BALANCE_OF = _selector("balanceOf(address)")
_AUTHORIZATION_STATE = _selector("authorizationState(address,bytes32)")
_TRANSFER_WITH_AUTHORIZATION_VRS = _selector(
    "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32)"
)
_TRANSFER_WITH_AUTHORIZATION_BYTES = _selector(
    "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes)"
)
_ERROR_STRING = _selector("Error(string)")
TRANSFER_TOPIC = "0x" + keccak(text="Transfer(address,address,uint256)").hex()
AUTHORIZATION_USED_TOPIC = "0x" + keccak(text="AuthorizationUsed(address,bytes32)").hex()
AUTHORIZATION_CANCELED_TOPIC = "0x" + keccak(text="AuthorizationCanceled(address,bytes32)").hex()

# one position of an eth_getLogs topic filter: a value, any of several, or anything (None)
Topic = str | Sequence[str] | None


def _word_address(address: str) -> bytes:
    return bytes(12) + bytes.fromhex(address[2:])


def encode_balance_of(owner: str) -> str:
    """Calldata of ``balanceOf(owner)``."""
    return "0x" + (_BALANCE_OF + _word_address(owner)).hex()


def encode_authorization_state(authorizer: str, nonce: bytes) -> str:
    """Calldata of ``authorizationState(authorizer, nonce)``."""
    return "0x" + (_AUTHORIZATION_STATE + _word_address(authorizer) + nonce).hex()


def encode_transfer_with_authorization(auth: TransferWithAuthorization, signature: bytes) -> str:
    """Calldata of ``transferWithAuthorization``: the ``v,r,s`` overload for 65-byte EOA
    signatures, the ``bytes`` overload (EIP-1271 wallets) otherwise."""
    head = (
        _word_address(auth.from_)
        + _word_address(auth.to)
        + auth.value.to_bytes(32, "big")
        + auth.valid_after.to_bytes(32, "big")
        + auth.valid_before.to_bytes(32, "big")
        + auth.nonce
    )
    if len(signature) == 65:
        v = signature[64] if signature[64] >= 27 else signature[64] + 27
        body = _TRANSFER_WITH_AUTHORIZATION_VRS + head + v.to_bytes(32, "big") + signature[:32] + signature[32:64]
    else:
        padded = signature + bytes(-len(signature) % 32)
        tail = (7 * 32).to_bytes(32, "big") + len(signature).to_bytes(32, "big") + padded
        body = _TRANSFER_WITH_AUTHORIZATION_BYTES + head + tail
    return "0x" + body.hex()


class ChainError(RuntimeError):
    """The RPC endpoint failed or answered with an error."""


class ReplyLost(ChainError):
    """The request may have reached the node, but no usable answer came back (a time-out, a
    dropped connection, an HTTP error): whatever it asked for may or may not have happened."""


class RevertError(ChainError):
    """An ``eth_call`` reverted.

    Attributes:
        reason: the decoded ``Error(string)`` text, or the node's message.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"execution reverted: {reason}")
        self.reason = reason


_JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True, slots=True)
class Receipt:
    """The parts of a transaction receipt settlement needs."""

    transaction_hash: str
    status: int
    block_number: int
    logs: list[dict[str, Any]]
    gas_wei: int = 0  # gasUsed x effectiveGasPrice: what the sender paid


def _revert_from_error(error: dict[str, Any]) -> RevertError:
    data = error.get("data")
    if isinstance(data, dict):  # some nodes nest it
        data = data.get("data")
    if isinstance(data, str) and data.startswith("0x" + _ERROR_STRING.hex()):
        try:
            (text,) = abi_decode(["string"], bytes.fromhex(data[10:]))
            return RevertError(str(text))
        except Exception:  # undecodable revert data: fall back to the node's message
            pass
    message = str(error.get("message", "reverted"))
    return RevertError(message.removeprefix("execution reverted: "))


async def _headers_going_out(_session: Any, context: SimpleNamespace, _params: Any) -> None:
    context.trace_request_ctx["sent"] = True


# marks the moment a request's bytes may start to reach the node: before it, a failure is
# "never reached" whatever aiohttp calls it (a connect time-out, a wait for a pooled connection)
_SENT = aiohttp.TraceConfig()
_SENT.on_request_headers_sent.append(_headers_going_out)


class ChainClient:
    """JSON-RPC to one EVM node.

    One client serves one event loop at a time: it opens its connection pool in the loop of its
    first call, and a new one if later called from another loop (the earlier loop's connections
    are left to that loop). `close` closes the current pool.

    Args:
        rpc_url: the node's HTTP endpoint.
        timeout: seconds per request.
    """

    def __init__(self, rpc_url: str, timeout: float = 10.0) -> None:
        self.rpc_url = rpc_url
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._proxy = env_proxy(rpc_url)
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ids = itertools.count(1)

    def __repr__(self) -> str:
        return f"ChainClient({self.rpc_url!r})"

    async def close(self) -> None:
        """Close the HTTP connections this client opened."""
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    def _client(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop or self._session.closed:
            self._session, self._loop = new_session(max_connections=64, trace_configs=[_SENT]), loop
        return self._session

    async def _post(self, body: Any) -> Any:
        progress = {"sent": False}
        try:
            async with self._client().post(
                self.rpc_url,
                data=to_json(body),
                headers=_JSON,
                timeout=self._timeout,
                proxy=self._proxy,
                allow_redirects=False,
                trace_request_ctx=progress,
            ) as reply:
                status, content = reply.status, await reply.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            if not progress["sent"]:
                # never reached the node: nothing it was asked can have happened
                raise ChainError(f"RPC unreachable: {exc.__class__.__name__}: {exc}") from exc
            raise ReplyLost(f"RPC request failed: {exc.__class__.__name__}: {exc}") from exc
        if status >= 300:
            raise ReplyLost(f"RPC answered badly: HTTP {status}")
        try:
            return json.loads(content)
        except ValueError as exc:
            raise ReplyLost(f"RPC answered badly: {exc.__class__.__name__}: {exc}") from exc

    async def call(self, method: str, params: list[Any]) -> Any:
        """One JSON-RPC call; returns ``result``.

        Raises:
            RevertError: an ``eth_call``/``eth_estimateGas`` reverted.
            ChainError: transport failure or any other RPC error.
        """
        body = await self._post({"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params})
        return self._result(method, body)

    async def batch(self, calls: list[tuple[str, list[Any]]]) -> list[Any | ChainError]:
        """Several calls in one HTTP request; each slot holds a result or its ChainError."""
        first = next(self._ids)
        body = [
            {"jsonrpc": "2.0", "id": first + i, "method": method, "params": params}
            for i, (method, params) in enumerate(calls)
        ]
        for _ in range(len(calls) - 1):
            next(self._ids)
        replies = await self._post(body)
        if not isinstance(replies, list):
            raise ChainError(f"batch answered with {type(replies).__name__}, not a list")
        by_id = {r.get("id"): r for r in replies if isinstance(r, dict)}
        out: list[Any | ChainError] = []
        for i, (method, _params) in enumerate(calls):
            reply = by_id.get(first + i)
            if reply is None:
                out.append(ChainError(f"{method}: no answer in batch"))
                continue
            try:
                out.append(self._result(method, reply))
            except ChainError as exc:
                out.append(exc)
        return out

    @staticmethod
    def _result(method: str, body: Any) -> Any:
        if not isinstance(body, dict):
            raise ChainError(f"{method}: malformed reply")
        error = body.get("error")
        if error is not None:
            if method in ("eth_call", "eth_estimateGas") and isinstance(error, dict):
                message = str(error.get("message", ""))
                if "revert" in message or error.get("data") or error.get("code") == 3:
                    raise _revert_from_error(error)
            raise ChainError(f"{method}: {error.get('message') if isinstance(error, dict) else error}")
        return body.get("result")

    async def chain_id(self) -> int:
        """The node's chain id."""
        return int(await self.call("eth_chainId", []), 16)

    async def get_code(self, address: str) -> str:
        """Deployed bytecode at ``address`` (``0x`` when none)."""
        code: str = await self.call("eth_getCode", [address, "latest"])
        return code

    async def eth_call(self, to: str, data: str, sender: str | None = None) -> str:
        """Run a read-only call; returns the hex result or raises RevertError."""
        tx: dict[str, str] = {"to": to, "data": data}
        if sender:
            tx["from"] = sender
        result: str = await self.call("eth_call", [tx, "latest"])
        return result

    async def balance_of(self, token: str, owner: str) -> int:
        """ERC-20 balance of ``owner`` in atomic units."""
        return int(await self.eth_call(token, encode_balance_of(owner)), 16)

    async def transaction_count(self, address: str, block: str = "pending") -> int:
        """The account nonce (``pending`` counts transactions in the mempool)."""
        return int(await self.call("eth_getTransactionCount", [address, block]), 16)

    async def fee_per_gas(self) -> tuple[int, int]:
        """``(maxFeePerGas, maxPriorityFeePerGas)`` for an EIP-1559 transaction."""
        block, tip = await self.batch([("eth_getBlockByNumber", ["latest", False]), ("eth_maxPriorityFeePerGas", [])])
        if isinstance(block, ChainError):
            raise block
        priority = int(tip, 16) if isinstance(tip, str) else 10**9
        base = int(block.get("baseFeePerGas") or "0x0", 16)
        return 2 * base + priority, priority

    async def send_raw_transaction(self, raw: bytes) -> str:
        """Broadcast a signed transaction; returns its hash."""
        tx_hash: str = await self.call("eth_sendRawTransaction", ["0x" + raw.hex()])
        return tx_hash

    async def send_and_receipt(self, raw: bytes) -> tuple[str, Receipt | None]:
        """Broadcast and ask for the receipt in the same round trip.

        Nodes that mine on arrival (anvil, sequencers with instant receipts) answer with the
        receipt at once; elsewhere it is None and the caller polls.

        Raises:
            ReplyLost: the transaction may or may not have been taken (its hash is
                ``keccak(raw)``, known before sending).
            ChainError: the node refused the transaction, or could not be reached.
        """
        tx_hash = "0x" + keccak(raw).hex()
        sent, receipt = await self.batch(
            [("eth_sendRawTransaction", ["0x" + raw.hex()]), ("eth_getTransactionReceipt", [tx_hash])]
        )
        if isinstance(sent, ChainError):
            raise sent
        if isinstance(receipt, dict):
            return tx_hash, self._receipt(receipt)
        return tx_hash, None

    @staticmethod
    def _receipt(raw: dict[str, Any]) -> Receipt:
        return Receipt(
            transaction_hash=raw["transactionHash"],
            status=int(raw["status"], 16),
            block_number=int(raw["blockNumber"], 16),
            logs=raw.get("logs") or [],
            gas_wei=int(raw.get("gasUsed") or "0x0", 16) * int(raw.get("effectiveGasPrice") or "0x0", 16),
        )

    async def receipt(self, tx_hash: str) -> Receipt | None:
        """The receipt of ``tx_hash``, or None while it is not mined."""
        raw = await self.call("eth_getTransactionReceipt", [tx_hash])
        return None if raw is None else self._receipt(raw)

    async def wait_for_receipt(self, tx_hash: str, timeout: float, poll: float = 0.005) -> Receipt | None:
        """Poll for the receipt until mined or ``timeout`` seconds pass (then None)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = poll
        while True:
            receipt = await self.receipt(tx_hash)
            if receipt is not None or loop.time() >= deadline:
                return receipt
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    async def get_logs(self, address: str, topics: Sequence[Topic], from_block: int | str = 0) -> list[dict[str, Any]]:
        """Logs of ``address`` matching ``topics``."""
        start = hex(from_block) if isinstance(from_block, int) else from_block
        logs: list[dict[str, Any]] = await self.call(
            "eth_getLogs", [{"address": address, "topics": list(topics), "fromBlock": start, "toBlock": "latest"}]
        )
        return logs

    async def block_timestamp(self, number: int) -> int:
        """The unix time block ``number`` was mined at.

        Raises:
            ChainError: the node failed, or does not have the block.
        """
        block = await self.call("eth_getBlockByNumber", [hex(number), False])
        if not isinstance(block, dict) or "timestamp" not in block:
            raise ChainError(f"block {number} is not known to the node")
        return int(str(block["timestamp"]), 16)

    async def logs_since(
        self, address: str, topics: Sequence[Topic], since: float, span: int = 10_000
    ) -> list[dict[str, Any]]:
        """Logs of ``address`` matching ``topics`` in the blocks mined since the unix time
        ``since`` (and up to ``span`` blocks before it), oldest first: asked ``span`` blocks at a
        time back from the head (`logs_between`), until a window starts before ``since``. A
        search bounded by time, where a search from block 0 is one a hosted node refuses.

        Raises:
            ChainError: the node failed.
        """
        end = int(await self.call("eth_blockNumber", []), 16)
        windows: list[list[dict[str, Any]]] = []
        while True:
            start = max(end - span + 1, 0)
            windows.append(await self.logs_between(address, topics, start, end, span))
            if start == 0 or await self.block_timestamp(start) < since:
                break
            end = start - 1
        return [entry for window in reversed(windows) for entry in window]

    async def logs_between(
        self, address: str, topics: Sequence[Topic], start: int, end: int, span: int = 10_000
    ) -> list[dict[str, Any]]:
        """Logs of ``address`` matching ``topics`` in blocks ``start`` to ``end`` (inclusive),
        asked for ``span`` blocks at a time (nodes cap a query's range; one they refuse is
        halved until it passes). Logs flagged ``removed`` (a reorganised block) are left out.

        Raises:
            ChainError: the node failed even for a single block.
        """
        out: list[dict[str, Any]] = []
        while start <= end:
            stop = min(start + span - 1, end)
            query = {"address": address, "topics": list(topics), "fromBlock": hex(start), "toBlock": hex(stop)}
            try:
                logs = await self.call("eth_getLogs", [query])
            except ChainError:
                if span == 1:
                    raise
                span = max(span // 2, 1)
                continue
            out += [e for e in logs or [] if not e.get("removed")]
            start = stop + 1
        return out
