"""A throw-away local EVM chain for tests, demos and the sandbox.

`DevChain.start` launches anvil (npm ``@foundry-rs/anvil``, installed under
``contracts/node_modules`` by ``scripts/test``) on a free loopback port, waits until it
answers, and stops its whole process group on `DevChain.stop`, on context exit, at
interpreter exit, and (Linux) when this process dies.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpcore  # noqa: F401  httpx imports it lazily; two threads doing so at once can deadlock
import httpx
from eth_typing import ChecksumAddress
from web3 import Web3
from web3.contract import Contract
from web3.types import TxReceipt

from payrouter.artifacts import load_artifact
from wallets import (
    CancelAuthorization,
    Eip712Domain,
    LocalSigner,
    TransactionSigner,
    TransferWithAuthorization,
)
from wallets.channels import BATCH_SETTLEMENT_ADDRESS, ERC3009_DEPOSIT_COLLECTOR_ADDRESS, MULTICALL3_ADDRESS

__all__ = [
    "BATCH_SETTLEMENT_ADDRESS",
    "ERC3009_DEPOSIT_COLLECTOR_ADDRESS",
    "MULTICALL3_ADDRESS",
    "AnvilNotFoundError",
    "DevChain",
    "DevChainError",
    "DevToken",
    "die_with_parent",
    "find_anvil",
    "free_port",
    "make_web3",
]

_REPO = Path(__file__).resolve().parent.parent
_READY_TIMEOUT = 15.0


class DevChainError(RuntimeError):
    """The dev chain could not start, or a transaction on it failed."""


class AnvilNotFoundError(DevChainError):
    """No anvil binary: run ``scripts/test`` (or ``npm ci --prefix contracts``) first."""


def find_anvil(explicit: str | None = None) -> str:
    """Locate the anvil binary.

    Order: ``explicit``, ``$PAYROUTER_ANVIL``, the platform binary under
    ``contracts/node_modules/@foundry-rs``, then ``anvil`` on ``PATH``.

    Raises:
        AnvilNotFoundError: none of those exists.
    """
    candidates = [explicit, os.environ.get("PAYROUTER_ANVIL")]
    candidates += [str(p) for p in sorted((_REPO / "contracts/node_modules/@foundry-rs").glob("anvil-*/bin/anvil"))]
    candidates.append(shutil.which("anvil"))
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise AnvilNotFoundError("anvil not found: run scripts/test, or npm ci --prefix contracts, or set PAYROUTER_ANVIL")


def make_web3(rpc_url: str, timeout: float = 10.0) -> Web3:
    """A Web3 over HTTP without the validation middleware, which costs two extra
    ``eth_chainId`` round trips per call."""
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": timeout}))
    w3.middleware_onion.remove("validation")
    return w3


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def die_with_parent() -> None:
    """For ``preexec_fn``: the child gets SIGTERM when this process dies, even by SIGKILL (Linux)."""
    # PR_SET_PDEATHSIG
    if sys.platform == "linux":
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


class DevChain:
    """A running anvil and helpers to fund accounts and deploy the dev stablecoin.

    Use as a context manager::

        with DevChain.start() as chain:
            token = chain.deploy_token()
            payer = chain.new_account()
            token.mint(payer.address, 10_000_000)
    """

    def __init__(self, process: subprocess.Popen[bytes], rpc_url: str, chain_id: int) -> None:
        self._process = process
        self.rpc_url = rpc_url
        self.chain_id = chain_id
        self.network = f"eip155:{chain_id}"
        self.w3 = make_web3(rpc_url)
        self._rpc = httpx.Client(timeout=10.0)
        self.deployer = self.new_account()
        atexit.register(self.stop)

    @classmethod
    def start(cls, *, chain_id: int = 31337, anvil: str | None = None, block_time: int | None = None) -> DevChain:
        """Start anvil on a free loopback port and wait until it answers ``eth_chainId``.

        Args:
            chain_id: the chain id anvil reports.
            anvil: path of the anvil binary (default: `find_anvil`).
            block_time: seconds per block; ``None`` mines each transaction at once.

        Raises:
            AnvilNotFoundError: anvil is not installed.
            DevChainError: anvil did not come up within 15 s (its stderr is included).
        """
        binary = find_anvil(anvil)
        for _attempt in range(3):
            port = free_port()
            args = [
                binary,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--chain-id",
                str(chain_id),
                "--silent",
            ]
            if block_time is not None:
                args += ["--block-time", str(block_time)]
            process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
            url = f"http://127.0.0.1:{port}"
            if _wait_ready(process, url, chain_id):
                return cls(process, url, chain_id)
            _kill_group(process)
        stderr = process.stderr.read().decode(errors="replace")[-2000:] if process.stderr else ""
        raise DevChainError(f"anvil did not start on 127.0.0.1 after 3 attempts: {stderr.strip()}")

    def stop(self) -> None:
        """Stop anvil and everything in its process group. Safe to call twice."""
        atexit.unregister(self.stop)
        _kill_group(self._process)
        self._rpc.close()

    def __enter__(self) -> DevChain:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """True while the anvil process is alive."""
        return self._process.poll() is None

    def rpc(self, method: str, params: list[Any]) -> Any:
        """One raw JSON-RPC call; returns ``result`` or raises DevChainError with the RPC error."""
        reply = self._rpc.post(self.rpc_url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        body = reply.json()
        if "error" in body:
            raise DevChainError(f"{method} failed: {body['error'].get('message')}")
        return body["result"]

    def set_eth_balance(self, address: str, wei: int) -> None:
        """Give ``address`` exactly ``wei`` of the native coin (anvil cheat code)."""
        self.rpc("anvil_setBalance", [address, hex(wei)])

    def new_account(self, eth_wei: int = 100 * 10**18) -> LocalSigner:
        """A fresh random key with ``eth_wei`` of gas money."""
        signer = LocalSigner.generate()
        self.set_eth_balance(signer.address, eth_wei)
        return signer

    def send(self, signer: TransactionSigner, tx: dict[str, Any]) -> TxReceipt:
        """Sign ``tx`` with ``signer``, send it and wait for the receipt.

        Raises:
            DevChainError: the transaction reverted (status 0).
        """
        tx = {
            "chainId": self.chain_id,
            "nonce": self.w3.eth.get_transaction_count(signer.address, "pending"),
            "gas": 1_000_000,
            "maxFeePerGas": 2 * 10**9 + self.w3.eth.get_block("latest").get("baseFeePerGas", 0) * 2,
            "maxPriorityFeePerGas": 10**9,
            **tx,
        }
        tx_hash = self.w3.eth.send_raw_transaction(signer.sign_transaction(tx))
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30, poll_latency=0.01)
        if receipt["status"] != 1:
            raise DevChainError(f"transaction {tx_hash.hex()} reverted")
        return receipt

    def install_at(self, name: str, args: list[Any], address: str) -> ChecksumAddress:
        """Deploy the committed artifact ``name`` with ``args``, then put its runtime code at
        ``address`` (``anvil_setCode``; constructor immutables stay in the code)."""
        artifact = load_artifact(name)
        factory = self.w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
        receipt = self.send(self.deployer, {"data": factory.constructor(*args).data_in_transaction, "gas": 6_000_000})
        deployed = receipt["contractAddress"]
        if deployed is None:  # pragma: no cover - a successful creation always has one
            raise DevChainError(f"deployment of {name} has no contract address")
        code = self.w3.eth.get_code(deployed)
        target = Web3.to_checksum_address(address)
        self.rpc("anvil_setCode", [target, "0x" + code.hex().removeprefix("0x")])
        return target

    def install_batch_settlement(self) -> tuple[ChecksumAddress, ChecksumAddress]:
        """Our x402 ``batch-settlement`` contracts at the addresses the official clients use on
        every chain: ``(settlement, ERC-3009 deposit collector)``.

        Also installs our Multicall3-compatible contract at `MULTICALL3_ADDRESS`, where the
        official facilitator reads channel state (its address is a constant, not returned).
        """
        settlement = self.install_at("BatchSettlement", [], BATCH_SETTLEMENT_ADDRESS)
        collector = self.install_at("ERC3009DepositCollector", [settlement], ERC3009_DEPOSIT_COLLECTOR_ADDRESS)
        self.install_at("Multicall3", [], MULTICALL3_ADDRESS)
        return settlement, collector

    def deploy_token(self, name: str = "USD Coin", symbol: str = "USDC", version: str = "2") -> DevToken:
        """Deploy the dev stablecoin (``contracts/src/DevUSDC.sol``) owned by `deployer`.

        ``name`` and ``version`` form the EIP-712 domain that x402 clients sign under.
        """
        artifact = load_artifact("DevUSDC")
        factory = self.w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
        data = factory.constructor(name, symbol, version).data_in_transaction
        receipt = self.send(self.deployer, {"data": data, "gas": 3_000_000})
        address = receipt["contractAddress"]
        if address is None:  # pragma: no cover - a successful creation always has one
            raise DevChainError("deployment receipt has no contract address")
        return DevToken(self, Web3.to_checksum_address(address), name, version)


class DevToken:
    """The deployed dev stablecoin: mint, balances, and EIP-3009 calls through web3."""

    def __init__(self, chain: DevChain, address: ChecksumAddress, name: str, version: str) -> None:
        self.chain = chain
        self.address = address
        self.contract: Contract = chain.w3.eth.contract(address=address, abi=load_artifact("DevUSDC")["abi"])
        self.domain = Eip712Domain(name, version, chain.chain_id, address)

    def mint(self, to: str, amount: int) -> TxReceipt:
        """Mint ``amount`` atomic units to ``to`` (as the owner, the chain's deployer)."""
        data = self.contract.encode_abi("mint", [Web3.to_checksum_address(to), amount])
        return self.chain.send(self.chain.deployer, {"to": self.address, "data": data})

    def balance_of(self, address: str) -> int:
        """Token balance of ``address`` in atomic units."""
        balance: int = self.contract.functions.balanceOf(Web3.to_checksum_address(address)).call()
        return balance

    def authorization_state(self, authorizer: str, nonce: bytes) -> bool:
        """True once ``nonce`` of ``authorizer`` is used or canceled."""
        used: bool = self.contract.functions.authorizationState(Web3.to_checksum_address(authorizer), nonce).call()
        return used

    def transfer_with_authorization_call(
        self, auth: TransferWithAuthorization, signature: bytes, *, split: bool = True
    ) -> Any:
        """The bound contract call; ``split`` picks the ``v,r,s`` overload, else ``bytes signature``."""
        args: list[Any] = [auth.from_, auth.to, auth.value, auth.valid_after, auth.valid_before, auth.nonce]
        if split:
            fn = self.contract.get_function_by_signature(
                "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32)"
            )
            return fn(*args, signature[64], signature[:32], signature[32:64])
        fn = self.contract.get_function_by_signature(
            "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes)"
        )
        return fn(*args, signature)

    def transfer_with_authorization(
        self,
        sender: TransactionSigner,
        auth: TransferWithAuthorization,
        signature: bytes,
        *,
        split: bool = True,
    ) -> TxReceipt:
        """Submit an EIP-3009 transfer from ``sender``'s account (who pays gas) and wait for it."""
        call = self.transfer_with_authorization_call(auth, signature, split=split)
        return self.chain.send(sender, {"to": self.address, "data": call._encode_transaction_data()})

    def cancel_authorization(
        self, sender: TransactionSigner, cancel: CancelAuthorization, signature: bytes, *, split: bool = True
    ) -> TxReceipt:
        """Submit an EIP-3009 cancellation; ``split`` picks the ``v,r,s`` overload, else ``bytes``."""
        if split:
            fn = self.contract.get_function_by_signature("cancelAuthorization(address,bytes32,uint8,bytes32,bytes32)")
            call = fn(cancel.authorizer, cancel.nonce, signature[64], signature[:32], signature[32:64])
        else:
            fn = self.contract.get_function_by_signature("cancelAuthorization(address,bytes32,bytes)")
            call = fn(cancel.authorizer, cancel.nonce, signature)
        return self.chain.send(sender, {"to": self.address, "data": call._encode_transaction_data()})


def _wait_ready(process: subprocess.Popen[bytes], url: str, chain_id: int) -> bool:
    deadline = time.monotonic() + _READY_TIMEOUT
    body = {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}
    with httpx.Client(timeout=1.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            try:
                if client.post(url, json=body).json().get("result") == hex(chain_id):
                    return True
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.01)
    return False


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
    if process.stderr:
        process.stderr.close()
