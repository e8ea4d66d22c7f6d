// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Strings} from "@openzeppelin/contracts/utils/Strings.sol";

/// @title Multicall3: many contract reads in one `eth_call`, behind Multicall3's ABI.
/// @notice The x402 SDK's batch-settlement facilitator reads channel state and simulates
///         deposits through `tryAggregate` at Multicall3's canonical address
///         (0xcA11bde05977b3631167028862bE2a173976CA11). A fresh dev chain has nothing there,
///         so the dev chain installs this contract at that address. Function signatures and
///         return encodings are Multicall3's, so any Multicall3 client can call it; the code
///         is written here.
/// @dev Every call is a plain CALL from this contract: targets see `msg.sender == address(this)`,
///      never the original caller, so nothing here can act on a caller's behalf.
///      Unlike Multicall3 the functions are not payable: no call forwards value, and ether
///      sent here could never leave. A target without code "succeeds" with empty return data,
///      as any CALL does; a caller that expects a value finds out when it decodes the result.
contract Multicall3 {
    /// @notice One call: `callData` (selector and arguments) sent to `target`.
    struct Call {
        address target;
        bytes callData;
    }

    /// @notice One call of `aggregate3`; `allowFailure` says whether its revert may pass.
    struct Call3 {
        address target;
        bool allowFailure;
        bytes callData;
    }

    /// @notice What one call did: whether it returned, and what it returned or reverted with.
    struct Result {
        bool success;
        bytes returnData;
    }

    /// @notice Makes every call in order; all must succeed.
    /// @dev Reverts with "Multicall3: required call <i> reverted" for the first call `i` that
    ///      reverts, so no partial result can be mistaken for a complete one.
    /// @return blockNumber the block the calls ran in, to tie the reads to one chain state.
    /// @return returnData each call's return data, in call order.
    function aggregate(Call[] calldata calls) external returns (uint256 blockNumber, bytes[] memory returnData) {
        blockNumber = block.number;
        returnData = new bytes[](calls.length);
        for (uint256 i; i < calls.length; ++i) {
            (bool success, bytes memory data) = calls[i].target.call(calls[i].callData);
            if (!success) _failed(i);
            returnData[i] = data;
        }
    }

    /// @notice Makes every call in order and reports each outcome.
    /// @param requireSuccess true: any revert reverts the whole batch (as in `aggregate`);
    ///        false: a revert is recorded as `success = false` with its revert data, so one bad
    ///        read does not hide the others.
    /// @return returnData one Result per call, in call order.
    function tryAggregate(bool requireSuccess, Call[] calldata calls) external returns (Result[] memory returnData) {
        returnData = new Result[](calls.length);
        for (uint256 i; i < calls.length; ++i) {
            (bool success, bytes memory data) = calls[i].target.call(calls[i].callData);
            if (requireSuccess && !success) _failed(i);
            returnData[i] = Result(success, data);
        }
    }

    /// @notice Like `tryAggregate`, but each call decides for itself whether it may fail.
    /// @dev Reverts for the first call that reverts without `allowFailure`.
    /// @return returnData one Result per call, in call order.
    function aggregate3(Call3[] calldata calls) external returns (Result[] memory returnData) {
        returnData = new Result[](calls.length);
        for (uint256 i; i < calls.length; ++i) {
            (bool success, bytes memory data) = calls[i].target.call(calls[i].callData);
            if (!success && !calls[i].allowFailure) _failed(i);
            returnData[i] = Result(success, data);
        }
    }

    /// @notice The current block number, to batch with reads that must be pinned to it.
    function getBlockNumber() external view returns (uint256 blockNumber) {
        blockNumber = block.number;
    }

    /// @notice The current block's timestamp, e.g. to compare with a withdrawal delay read in
    ///         the same batch.
    function getCurrentBlockTimestamp() external view returns (uint256 timestamp) {
        timestamp = block.timestamp;
    }

    /// @notice The native-coin balance of `addr`, in wei; lets a batch read gas money too.
    function getEthBalance(address addr) external view returns (uint256 balance) {
        balance = addr.balance;
    }

    /// @notice The chain id, so a batch can prove which chain it read.
    function getChainId() external view returns (uint256 chainid) {
        chainid = block.chainid;
    }

    /// @dev One wording for every mode; the index tells the caller which call to look at.
    function _failed(uint256 index) private pure {
        revert(string.concat("Multicall3: required call ", Strings.toString(index), " reverted"));
    }
}
