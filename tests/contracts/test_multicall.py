"""Our Multicall3-compatible contract on a real anvil, read by the official x402 SDK.

`DevChain.install_batch_settlement` puts it at Multicall3's canonical address, where the SDK's
batch-settlement facilitator reads chain state with ``tryAggregate(false, calls)``. Each call's
success flag and return (or revert) data must come back byte for byte, in call order, or the
facilitator misreads balances and misclassifies failures.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from eth_abi.abi import encode
from eth_utils.crypto import keccak
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractLogicError
from x402.mechanisms.evm import FacilitatorWeb3Signer
from x402.mechanisms.evm import constants as sdk_evm_constants
from x402.mechanisms.evm.batch_settlement.facilitator.utils import read_channel_state
from x402.mechanisms.evm.multicall import MulticallCall, multicall

import wallets
from payrouter.artifacts import load_artifact
from payrouter.devchain import DevChain, DevChainError, DevToken
from wallets.channels import BATCH_SETTLEMENT_ADDRESS, MULTICALL3_ADDRESS

MULTICALL = Web3.to_checksum_address(MULTICALL3_ADDRESS)
SETTLEMENT = Web3.to_checksum_address(BATCH_SETTLEMENT_ADDRESS)
PAYEE_ONLY = "FiatTokenV2: caller must be the payee"
HOLDER_BALANCE = 1_234_567


@pytest.fixture(scope="module")
def mc(chain: DevChain) -> Contract:
    chain.install_batch_settlement()
    return chain.w3.eth.contract(address=MULTICALL, abi=load_artifact("Multicall3")["abi"])


@pytest.fixture(scope="module")
def holder(chain: DevChain, token: DevToken) -> str:
    address = chain.new_account().address
    token.mint(address, HOLDER_BALANCE)
    return address


def _data(call: Any) -> bytes:
    return bytes.fromhex(call._encode_transaction_data().removeprefix("0x"))


def _error_string(reason: str) -> bytes:
    """What ``revert("reason")`` returns: ``Error(string)`` ABI-encoded."""
    return bytes.fromhex("08c379a0") + encode(["string"], [reason])


def _receive_not_as_payee(token: DevToken) -> bytes:
    """A DevUSDC call that reverts with a reason string when the multicall (not the payee) makes it."""
    fn = token.contract.get_function_by_signature(
        "receiveWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes)"
    )
    return _data(fn(Web3.to_checksum_address("0x" + "11" * 20), token.address, 1, 0, 2**40, os.urandom(32), b""))


def _mint_as_stranger(token: DevToken, to: str) -> tuple[bytes, bytes]:
    """A mint the multicall (not the owner) makes, and the OpenZeppelin custom error it reverts with."""
    revert_data = keccak(text="OwnableUnauthorizedAccount(address)")[:4] + encode(["address"], [MULTICALL3_ADDRESS])
    return _data(token.contract.functions.mint(to, 5)), revert_data


def _sdk_signer(chain: DevChain) -> FacilitatorWeb3Signer:
    return FacilitatorWeb3Signer(private_key=chain.new_account().unsafe_export_private_key(), rpc_url=chain.rpc_url)


def test_address_and_try_aggregate_abi_match_the_sdk() -> None:
    assert MULTICALL3_ADDRESS == wallets.MULTICALL3_ADDRESS == sdk_evm_constants.MULTICALL3_ADDRESS
    (sdk_entry,) = sdk_evm_constants.MULTICALL3_TRY_AGGREGATE_ABI
    (ours,) = [e for e in load_artifact("Multicall3")["abi"] if e.get("name") == "tryAggregate"]

    def shape(params: Any) -> list[Any]:
        return [(p["name"], p["type"], shape(p.get("components", []))) for p in params]

    assert (shape(ours["inputs"]), shape(ours["outputs"])) == (shape(sdk_entry["inputs"]), shape(sdk_entry["outputs"]))


def test_install_batch_settlement_puts_it_at_the_canonical_address(chain: DevChain, mc: Contract) -> None:
    assert len(chain.w3.eth.get_code(MULTICALL)) > 100
    assert mc.functions.getChainId().call() == chain.chain_id


def test_try_aggregate_reports_each_calls_success_and_exact_data(mc: Contract, token: DevToken, holder: str) -> None:
    fns = token.contract.functions
    mint, unauthorized = _mint_as_stranger(token, holder)
    calls = [
        (token.address, _data(fns.balanceOf(holder))),
        (token.address, _receive_not_as_payee(token)),
        (token.address, _data(fns.name())),
        (token.address, mint),
        (holder, b"\x12\x34"),  # no code there: a CALL to an account succeeds with nothing
    ]
    assert mc.functions.tryAggregate(False, calls).call() == [
        (True, encode(["uint256"], [HOLDER_BALANCE])),
        (False, _error_string(PAYEE_ONLY)),
        (True, encode(["string"], ["USD Coin"])),
        (False, unauthorized),
        (True, b""),
    ]
    assert mc.functions.tryAggregate(False, []).call() == []


def test_try_aggregate_requiring_success_reverts_on_a_failed_call(mc: Contract, token: DevToken, holder: str) -> None:
    balance = (token.address, _data(token.contract.functions.balanceOf(holder)))
    ok = (True, encode(["uint256"], [HOLDER_BALANCE]))
    assert mc.functions.tryAggregate(True, [balance, balance]).call() == [ok, ok]
    with pytest.raises(ContractLogicError, match="Multicall3: required call 1 reverted"):
        mc.functions.tryAggregate(True, [balance, (token.address, _receive_not_as_payee(token))]).call()


def test_aggregate3_lets_only_calls_that_allow_failure_fail(mc: Contract, token: DevToken, holder: str) -> None:
    balance = _data(token.contract.functions.balanceOf(holder))
    failing = _receive_not_as_payee(token)
    assert mc.functions.aggregate3([(token.address, False, balance), (token.address, True, failing)]).call() == [
        (True, encode(["uint256"], [HOLDER_BALANCE])),
        (False, _error_string(PAYEE_ONLY)),
    ]
    # the allowed failure at 0 passes; the required one at 1 names itself
    with pytest.raises(ContractLogicError, match="Multicall3: required call 1 reverted"):
        mc.functions.aggregate3([(token.address, True, failing), (token.address, False, failing)]).call()


def test_aggregate_returns_the_block_and_every_result_or_reverts(
    chain: DevChain, mc: Contract, token: DevToken, holder: str
) -> None:
    balance = (token.address, _data(token.contract.functions.balanceOf(holder)))
    block, results = mc.functions.aggregate(
        [balance, (token.address, _data(token.contract.functions.decimals()))]
    ).call()
    assert block == chain.w3.eth.block_number
    assert results == [encode(["uint256"], [HOLDER_BALANCE]), encode(["uint8"], [6])]
    with pytest.raises(ContractLogicError, match="Multicall3: required call 0 reverted"):
        mc.functions.aggregate([(token.address, _receive_not_as_payee(token)), balance]).call()


def test_block_and_balance_getters(chain: DevChain, mc: Contract, holder: str) -> None:
    chain.set_eth_balance(holder, 7 * 10**18 + 3)
    latest = chain.w3.eth.get_block("latest")
    fns = mc.functions
    assert (fns.getBlockNumber().call(), fns.getCurrentBlockTimestamp().call()) == (
        latest["number"],
        latest["timestamp"],
    )
    assert fns.getEthBalance(holder).call() == 7 * 10**18 + 3


def test_value_sent_to_it_is_refused(chain: DevChain, mc: Contract) -> None:
    # not payable: nothing forwards value, so ether sent here could never leave. A raw eth_call,
    # because web3 refuses client-side to send value to a non-payable function.
    data = "0x" + _data(mc.functions.tryAggregate(False, [])).hex()
    call = {"from": chain.deployer.address, "to": MULTICALL3_ADDRESS, "data": data}
    assert chain.rpc("eth_call", [call, "latest"]) == "0x" + encode(["(bool,bytes)[]"], [[]]).hex()
    with pytest.raises(DevChainError, match="revert"):
        chain.rpc("eth_call", [{**call, "value": "0x1"}, "latest"])


@pytest.mark.usefixtures("mc")
def test_the_sdk_multicall_helper_decodes_our_results(chain: DevChain, token: DevToken, holder: str) -> None:
    abi = load_artifact("DevUSDC")["abi"]
    mint, unauthorized = _mint_as_stranger(token, holder)
    results = multicall(
        _sdk_signer(chain),
        [
            MulticallCall(token.address, abi, "balanceOf", (holder,)),
            MulticallCall(token.address, abi, "name"),
            MulticallCall(token.address, call_data=_receive_not_as_payee(token)),
            MulticallCall(token.address.lower(), abi, "decimals"),
            MulticallCall(token.address, call_data=mint),
            MulticallCall(token.address, call_data=_data(token.contract.functions.totalSupply())),
        ],
    )
    assert [(r.success, r.result) for r in results] == [
        (True, HOLDER_BALANCE),
        (True, "USD Coin"),
        (False, None),
        (True, 6),
        (False, None),
        (True, None),  # raw call data: the SDK reports success only
    ]
    assert str(results[2].error) == f"execution reverted: {PAYEE_ONLY}"
    assert str(results[4].error) == f"execution reverted (0x{unauthorized.hex()})"


@pytest.mark.usefixtures("mc")
def test_the_sdk_facilitator_reads_channel_state_through_it(chain: DevChain) -> None:
    # Plant a state no flow makes at once (every field distinct), so a swapped or shifted field shows.
    # Slots: OpenZeppelin's EIP712 keeps its two string fallbacks in 0 and 1, then BatchSettlement
    # declares channels (2), pendingWithdrawals (3), receivers (4), refundNonce (5).
    channel_id = os.urandom(32)
    settlement = chain.w3.eth.contract(address=SETTLEMENT, abi=load_artifact("BatchSettlement")["abi"])

    def put(slot: int, value: int) -> None:
        key = keccak(channel_id + slot.to_bytes(32, "big"))
        chain.rpc("anvil_setStorageAt", [BATCH_SETTLEMENT_ADDRESS, "0x" + key.hex(), "0x" + value.to_bytes(32).hex()])

    put(2, (400 << 128) | 1_000)  # ChannelState{balance: 1000, totalClaimed: 400}
    put(3, (1_700_000_000 << 128) | 250)  # PendingWithdrawal{amount: 250, initiatedAt: 1_700_000_000}
    put(5, 3)  # refundNonce
    fns = settlement.functions
    assert (fns.channels(channel_id).call(), fns.pendingWithdrawals(channel_id).call()) == (
        [1_000, 400],
        [250, 1_700_000_000],
    ), "storage layout changed: update the slots above"
    assert fns.refundNonce(channel_id).call() == 3

    state = read_channel_state(_sdk_signer(chain), "0x" + channel_id.hex())
    assert (state.balance, state.total_claimed, state.withdraw_requested_at, state.refund_nonce) == (
        1_000,
        400,
        1_700_000_000,
        3,
    )
