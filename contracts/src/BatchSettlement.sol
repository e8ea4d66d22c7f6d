// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {SignatureChecker} from "@openzeppelin/contracts/utils/cryptography/SignatureChecker.sol";
import {Multicall} from "@openzeppelin/contracts/utils/Multicall.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

/// @notice What a settlement contract asks of a deposit collector: pull `amount` of `token`
///         from `payer` (with the payer's authorization in `data`) and hand it to the caller.
interface IDepositCollector {
    function collect(address payer, address token, uint256 amount, bytes32 channelId, bytes calldata data)
        external;
}

/// @title BatchSettlement: x402 `batch-settlement` payment channels (EVM binding).
/// @notice A payer locks tokens in a channel; the receiver claims cumulative vouchers the payer
///         signed (many channels per transaction) and later sweeps what it claimed with `settle`.
///         The payer gets unclaimed money back through a cooperative refund (signed by the
///         receiver side) or, unilaterally, through a withdrawal that waits `withdrawDelay`
///         seconds so the receiver can still claim what it is owed.
/// @dev Wire-compatible with the official x402 clients: same function selectors, EIP-712 domain
///      ("x402 Batch Settlement", "1"), type strings and `Settled` event. A channel is
///      identified by the EIP-712 digest of its ChannelConfig under this contract's domain, so
///      an id is bound to the chain and to this contract's address.
///
///      Accounting: `balance` is everything ever deposited minus what went back to the payer;
///      `totalClaimed` is the receiver's cumulative share of it. Claims do not move tokens and do
///      not lower `balance`; the unclaimed remainder `balance - totalClaimed` is what refunds and
///      withdrawals may return. Per (receiver, token), claimed minus settled is what `settle` pays.
contract BatchSettlement is EIP712, Multicall, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    struct ChannelConfig {
        address payer;
        address payerAuthorizer; // signs vouchers with plain ECDSA; zero = the payer signs (EOA or ERC-1271)
        address receiver;
        address receiverAuthorizer; // co-signs claim batches and refunds for the receiver
        address token;
        uint40 withdrawDelay;
        bytes32 salt;
    }

    struct Voucher {
        ChannelConfig channel;
        uint128 maxClaimableAmount;
    }

    struct VoucherClaim {
        Voucher voucher;
        bytes signature; // the payer side's signature over Voucher(channelId, maxClaimableAmount)
        uint128 totalClaimed; // the cumulative amount the receiver claims, at most the voucher's max
    }

    struct ChannelState {
        uint128 balance;
        uint128 totalClaimed;
    }

    struct PendingWithdrawal {
        uint128 amount;
        uint40 initiatedAt;
    }

    struct ReceiverState {
        uint128 totalClaimed;
        uint128 totalSettled;
    }

    uint40 public constant MIN_WITHDRAW_DELAY = 900; // 15 minutes
    uint40 public constant MAX_WITHDRAW_DELAY = 2_592_000; // 30 days

    bytes32 public constant CHANNEL_CONFIG_TYPEHASH = keccak256(
        "ChannelConfig(address payer,address payerAuthorizer,address receiver,address receiverAuthorizer,address token,uint40 withdrawDelay,bytes32 salt)"
    );
    bytes32 public constant VOUCHER_TYPEHASH = keccak256("Voucher(bytes32 channelId,uint128 maxClaimableAmount)");
    bytes32 public constant REFUND_TYPEHASH = keccak256("Refund(bytes32 channelId,uint256 nonce,uint128 amount)");
    bytes32 public constant CLAIM_ENTRY_TYPEHASH =
        keccak256("ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)");
    bytes32 public constant CLAIM_BATCH_TYPEHASH = keccak256(
        "ClaimBatch(ClaimEntry[] claims)ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)"
    );

    mapping(bytes32 channelId => ChannelState) public channels;
    mapping(bytes32 channelId => PendingWithdrawal) public pendingWithdrawals;
    mapping(address receiver => mapping(address token => ReceiverState)) public receivers;
    mapping(bytes32 channelId => uint256) public refundNonce;

    event Deposited(bytes32 indexed channelId, address indexed payer, address indexed collector, uint128 amount);
    event Claimed(bytes32 indexed channelId, address indexed receiver, uint128 totalClaimed, uint128 delta);
    event Settled(address indexed receiver, address indexed token, address indexed sender, uint128 amount);
    event WithdrawInitiated(bytes32 indexed channelId, uint128 amount, uint40 initiatedAt);
    event WithdrawFinalized(bytes32 indexed channelId, address indexed payer, uint128 amount);
    event Refunded(bytes32 indexed channelId, address indexed payer, uint256 nonce, uint128 amount);

    error InvalidChannelConfig();
    error InvalidWithdrawDelay(uint40 withdrawDelay);
    error ZeroAmount();
    error InvalidCollector();
    error DepositShortfall(uint256 expected, uint256 received);
    error EmptyBatch();
    error MixedReceiverAuthorizers();
    error InvalidAuthorizerSignature();
    error InvalidVoucherSignature(bytes32 channelId);
    error ClaimAboveVoucher(bytes32 channelId, uint128 totalClaimed, uint128 maxClaimableAmount);
    error ClaimAboveBalance(bytes32 channelId, uint128 totalClaimed, uint128 balance);
    error NotReceiver();
    error NotPayer();
    error AmountAboveAvailable(uint128 amount, uint128 available);
    error WithdrawPending();
    error NoPendingWithdraw();
    error WithdrawDelayNotElapsed(uint256 readyAt);
    error InvalidRefundNonce(uint256 expected, uint256 given);

    constructor() EIP712("x402 Batch Settlement", "1") {}

    // ---------------------------------------------------------------- deposits

    /// @notice Add `amount` to a channel (opening it on first use). Anyone may submit; the
    ///         collector checks the payer's authorization in `collectorData` and must deliver
    ///         exactly `amount` tokens to this contract.
    function deposit(ChannelConfig calldata config, uint128 amount, address collector, bytes calldata collectorData)
        external
        nonReentrant
    {
        _checkConfig(config);
        if (amount == 0) revert ZeroAmount();
        if (collector == address(0) || collector.code.length == 0) revert InvalidCollector();
        bytes32 channelId = getChannelId(config);
        channels[channelId].balance += amount; // checked: a uint128 overflow reverts

        IERC20 token = IERC20(config.token);
        uint256 before = token.balanceOf(address(this));
        IDepositCollector(collector).collect(config.payer, config.token, amount, channelId, collectorData);
        uint256 received = token.balanceOf(address(this)) - before;
        if (received != amount) revert DepositShortfall(amount, received);
        emit Deposited(channelId, config.payer, collector, amount);
    }

    // ------------------------------------------------------------------ claims

    /// @notice Claim vouchers as the receiver (or its authorizer) of every row.
    function claim(VoucherClaim[] calldata voucherClaims) external nonReentrant {
        for (uint256 i = 0; i < voucherClaims.length; ++i) {
            ChannelConfig calldata ch = voucherClaims[i].voucher.channel;
            if (msg.sender != ch.receiver && msg.sender != ch.receiverAuthorizer) revert NotReceiver();
            _claim(voucherClaims[i]);
        }
    }

    /// @notice Claim vouchers on the strength of the receiver authorizer's signature over the
    ///         whole batch, so any relayer (a facilitator) may submit it.
    function claimWithSignature(VoucherClaim[] calldata voucherClaims, bytes calldata authorizerSignature)
        external
        nonReentrant
    {
        if (voucherClaims.length == 0) revert EmptyBatch();
        address authorizer = voucherClaims[0].voucher.channel.receiverAuthorizer;
        for (uint256 i = 1; i < voucherClaims.length; ++i) {
            if (voucherClaims[i].voucher.channel.receiverAuthorizer != authorizer) revert MixedReceiverAuthorizers();
        }
        if (!SignatureChecker.isValidSignatureNow(authorizer, getClaimBatchDigest(voucherClaims), authorizerSignature))
        {
            revert InvalidAuthorizerSignature();
        }
        for (uint256 i = 0; i < voucherClaims.length; ++i) {
            _claim(voucherClaims[i]);
        }
    }

    /// @notice Pay `receiver` everything it claimed in `token` and has not been paid yet.
    ///         Anyone may call; the money only ever goes to the receiver. Nothing owed: no-op.
    function settle(address receiver, address token) external nonReentrant {
        ReceiverState storage r = receivers[receiver][token];
        uint128 owed = r.totalClaimed - r.totalSettled;
        if (owed == 0) return;
        r.totalSettled = r.totalClaimed;
        IERC20(token).safeTransfer(receiver, owed);
        emit Settled(receiver, token, msg.sender, owed);
    }

    // ------------------------------------------------------------- withdrawals

    /// @notice Start a unilateral withdrawal of `amount` unclaimed tokens; it can be finalized
    ///         `withdrawDelay` seconds later. One pending withdrawal per channel.
    function initiateWithdraw(ChannelConfig calldata config, uint128 amount) external nonReentrant {
        _onlyPayer(config);
        bytes32 channelId = getChannelId(config);
        ChannelState storage ch = channels[channelId];
        uint128 available = ch.balance - ch.totalClaimed;
        if (amount == 0) revert ZeroAmount();
        if (amount > available) revert AmountAboveAvailable(amount, available);
        PendingWithdrawal storage p = pendingWithdrawals[channelId];
        if (p.initiatedAt != 0) revert WithdrawPending();
        p.amount = amount;
        p.initiatedAt = uint40(block.timestamp);
        emit WithdrawInitiated(channelId, amount, uint40(block.timestamp));
    }

    /// @notice After the delay, pay the payer the pending amount, less anything the receiver
    ///         claimed in the meantime.
    function finalizeWithdraw(ChannelConfig calldata config) external nonReentrant {
        _onlyPayer(config);
        bytes32 channelId = getChannelId(config);
        PendingWithdrawal memory p = pendingWithdrawals[channelId];
        if (p.initiatedAt == 0) revert NoPendingWithdraw();
        uint256 readyAt = uint256(p.initiatedAt) + config.withdrawDelay;
        if (block.timestamp < readyAt) revert WithdrawDelayNotElapsed(readyAt);
        delete pendingWithdrawals[channelId];

        ChannelState storage ch = channels[channelId];
        uint128 available = ch.balance - ch.totalClaimed;
        uint128 amount = p.amount < available ? p.amount : available;
        ch.balance -= amount;
        if (amount != 0) IERC20(config.token).safeTransfer(config.payer, amount);
        emit WithdrawFinalized(channelId, config.payer, amount);
    }

    // ----------------------------------------------------------------- refunds

    /// @notice Return up to `amount` unclaimed tokens to the payer, as the receiver side.
    function refund(ChannelConfig calldata config, uint128 amount) external nonReentrant {
        if (msg.sender != config.receiver && msg.sender != config.receiverAuthorizer) revert NotReceiver();
        _refund(config, getChannelId(config), amount);
    }

    /// @notice Return up to `amount` unclaimed tokens to the payer on the receiver authorizer's
    ///         signature over Refund(channelId, nonce, amount). `nonce` must be the channel's
    ///         current refund nonce, so each signature works once.
    function refundWithSignature(
        ChannelConfig calldata config,
        uint128 amount,
        uint256 nonce,
        bytes calldata receiverAuthorizerSignature
    ) external nonReentrant {
        bytes32 channelId = getChannelId(config);
        uint256 expected = refundNonce[channelId];
        if (nonce != expected) revert InvalidRefundNonce(expected, nonce);
        if (!SignatureChecker.isValidSignatureNow(
                config.receiverAuthorizer, getRefundDigest(channelId, nonce, amount), receiverAuthorizerSignature
            )) revert InvalidAuthorizerSignature();
        _refund(config, channelId, amount);
    }

    // ------------------------------------------------------------------- views

    /// @notice The channel id: the EIP-712 digest of `config` under this contract's domain.
    function getChannelId(ChannelConfig calldata config) public view returns (bytes32) {
        return _hashTypedDataV4(
            keccak256(
                abi.encode(
                    CHANNEL_CONFIG_TYPEHASH,
                    config.payer,
                    config.payerAuthorizer,
                    config.receiver,
                    config.receiverAuthorizer,
                    config.token,
                    config.withdrawDelay,
                    config.salt
                )
            )
        );
    }

    function getVoucherDigest(bytes32 channelId, uint128 maxClaimableAmount) public view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(VOUCHER_TYPEHASH, channelId, maxClaimableAmount)));
    }

    function getRefundDigest(bytes32 channelId, uint256 nonce, uint128 amount) public view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(REFUND_TYPEHASH, channelId, nonce, amount)));
    }

    /// @notice The digest the receiver authorizer signs for `claimWithSignature`: an EIP-712
    ///         ClaimBatch whose entries are (channelId, maxClaimableAmount, totalClaimed).
    function getClaimBatchDigest(VoucherClaim[] calldata voucherClaims) public view returns (bytes32) {
        bytes32[] memory entries = new bytes32[](voucherClaims.length);
        for (uint256 i = 0; i < voucherClaims.length; ++i) {
            VoucherClaim calldata c = voucherClaims[i];
            entries[i] = keccak256(
                abi.encode(
                    CLAIM_ENTRY_TYPEHASH, getChannelId(c.voucher.channel), c.voucher.maxClaimableAmount, c.totalClaimed
                )
            );
        }
        return _hashTypedDataV4(keccak256(abi.encode(CLAIM_BATCH_TYPEHASH, keccak256(abi.encodePacked(entries)))));
    }

    /// @notice The EIP-712 domain separator (for off-chain checks).
    // solhint-disable-next-line func-name-mixedcase
    function DOMAIN_SEPARATOR() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    // ---------------------------------------------------------------- internal

    function _checkConfig(ChannelConfig calldata config) private pure {
        if (
            config.payer == address(0) || config.receiver == address(0) || config.receiverAuthorizer == address(0)
                || config.token == address(0)
        ) revert InvalidChannelConfig();
        if (config.withdrawDelay < MIN_WITHDRAW_DELAY || config.withdrawDelay > MAX_WITHDRAW_DELAY) {
            revert InvalidWithdrawDelay(config.withdrawDelay);
        }
    }

    function _onlyPayer(ChannelConfig calldata config) private view {
        if (msg.sender != config.payer && (config.payerAuthorizer == address(0) || msg.sender != config.payerAuthorizer))
        {
            revert NotPayer();
        }
    }

    /// @dev One claim row. A row at or below what is already claimed is skipped (so a batch
    ///      that races an earlier claim still lands); a row above its voucher or above the
    ///      channel's balance reverts the whole batch.
    function _claim(VoucherClaim calldata c) private {
        ChannelConfig calldata config = c.voucher.channel;
        bytes32 channelId = getChannelId(config);
        ChannelState storage ch = channels[channelId];
        uint128 claimed = ch.totalClaimed;
        uint128 target = c.totalClaimed;
        if (target <= claimed) return;
        uint128 maxClaimable = c.voucher.maxClaimableAmount;
        if (target > maxClaimable) revert ClaimAboveVoucher(channelId, target, maxClaimable);
        if (target > ch.balance) revert ClaimAboveBalance(channelId, target, ch.balance);
        if (!_validVoucherSignature(config, getVoucherDigest(channelId, maxClaimable), c.signature)) {
            revert InvalidVoucherSignature(channelId);
        }
        uint128 delta = target - claimed;
        ch.totalClaimed = target;
        receivers[config.receiver][config.token].totalClaimed += delta;
        emit Claimed(channelId, config.receiver, target, delta);
    }

    /// @dev A set payerAuthorizer must be an ECDSA key; otherwise the payer signs, which may be
    ///      a contract wallet (ERC-1271).
    function _validVoucherSignature(ChannelConfig calldata config, bytes32 digest, bytes calldata signature)
        private
        view
        returns (bool)
    {
        if (config.payerAuthorizer != address(0)) {
            (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecover(digest, signature);
            return err == ECDSA.RecoverError.NoError && signer == config.payerAuthorizer;
        }
        return SignatureChecker.isValidSignatureNow(config.payer, digest, signature);
    }

    /// @dev Shared tail of both refunds. The nonce moves first, so a signed refund is spent
    ///      even when nothing is left to return. The refund is capped at the unclaimed
    ///      remainder, and a pending withdrawal shrinks by what the refund returned (and never
    ///      stays above what is left).
    function _refund(ChannelConfig calldata config, bytes32 channelId, uint128 amount) private {
        if (amount == 0) revert ZeroAmount();
        uint256 nonce = refundNonce[channelId]++;
        ChannelState storage ch = channels[channelId];
        uint128 available = ch.balance - ch.totalClaimed;
        if (amount > available) amount = available;
        if (amount == 0) return;
        ch.balance -= amount;

        PendingWithdrawal storage p = pendingWithdrawals[channelId];
        if (p.initiatedAt != 0) {
            uint128 left = p.amount > amount ? p.amount - amount : 0;
            uint128 remaining = available - amount;
            if (left > remaining) left = remaining;
            if (left == 0) delete pendingWithdrawals[channelId];
            else p.amount = left;
        }
        IERC20(config.token).safeTransfer(config.payer, amount);
        emit Refunded(channelId, config.payer, nonce, amount);
    }
}
