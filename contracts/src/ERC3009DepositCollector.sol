// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";

/// @notice The EIP-3009 call the collector makes (the `bytes`-signature overload of
///         FiatTokenV2.2 and DevUSDC, which also accepts ERC-1271 wallets).
interface IERC3009Receive {
    function receiveWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        bytes memory signature
    ) external;
}

/// @title ERC3009DepositCollector: funds batch-settlement deposits with an EIP-3009 authorization.
/// @notice The payer signs ReceiveWithAuthorization(to = this collector, value = deposit,
///         nonce = keccak256(abi.encode(channelId, salt))). Binding the nonce to the channel id
///         means an authorization can fund only the channel it was signed for, and
///         `receiveWithAuthorization` (payee must be the caller) means nobody can front-run it
///         into a plain transfer. The collector then forwards the tokens to the settlement
///         contract, which checks that they arrived.
/// @dev The settlement address is an immutable, so it survives `anvil_setCode` installs.
contract ERC3009DepositCollector {
    using SafeERC20 for IERC20;

    address public immutable settlement;

    error OnlySettlement();

    constructor(address settlement_) {
        settlement = settlement_;
    }

    /// @param data abi.encode(uint256 validAfter, uint256 validBefore, uint256 salt, bytes signature)
    function collect(address payer, address token, uint256 amount, bytes32 channelId, bytes calldata data) external {
        if (msg.sender != settlement) revert OnlySettlement();
        (uint256 validAfter, uint256 validBefore, uint256 salt, bytes memory signature) =
            abi.decode(data, (uint256, uint256, uint256, bytes));
        bytes32 nonce = keccak256(abi.encode(channelId, salt));
        IERC3009Receive(token).receiveWithAuthorization(
            payer, address(this), amount, validAfter, validBefore, nonce, signature
        );
        IERC20(token).safeTransfer(settlement, amount);
    }
}
