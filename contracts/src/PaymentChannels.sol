// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {IValidatorRewards} from "./interfaces/IValidatorRewards.sol";

/// @title PaymentChannels
/// @notice Unidirectional native-ETH payment channels from a client (payer) to a node operator (payee).
///         The payer signs EIP-712 vouchers `Voucher{channelId, cumulativeAmount}` off-chain (paying ahead within
///         its credit window), each with a higher cumulative amount; the payee redeems the latest one whenever settling is worth the gas.
///         Redemption is cumulative and idempotent: it pays `cumulativeAmount - redeemed`, never more than the
///         deposit, and a voucher at or below what was already redeemed pays nothing. `redeemMany` settles many
///         channels of one payee in a single transaction with one transfer. Every redemption sends a protocol fee
///         to ValidatorRewards.
/// @dev Lifecycle: `open` -> (`topUp`)* -> `startClose` (payer) -> challenge window in which the payee can still
///      redeem -> `withdraw` of the rest by the payer. A channel also stops being redeemable at its expiry.
///      Gas figures in events are execution gas measured with `gasleft()`, without the 21,000 base cost and calldata.
contract PaymentChannels is EIP712, ReentrancyGuardTransient {
    /// @notice EIP-712 type hash of a voucher.
    bytes32 public constant VOUCHER_TYPEHASH = keccak256("Voucher(bytes32 channelId,uint256 cumulativeAmount)");
    /// @notice Basis points in one whole.
    uint256 private constant BPS = 10_000;
    /// @notice Shortest close window the constructor accepts (a payee needs time to notice and redeem).
    uint256 public constant MIN_CHALLENGE_WINDOW = 1 hours;
    /// @notice Longest close window the constructor accepts.
    uint256 public constant MAX_CHALLENGE_WINDOW = 365 days;

    /// @notice Where protocol fees go.
    IValidatorRewards public immutable REWARDS;
    /// @notice Protocol fee in basis points of each redeemed amount.
    uint256 public immutable FEE_BPS;
    /// @notice Seconds the payee keeps to redeem after the payer starts closing.
    uint256 public immutable CHALLENGE_WINDOW;

    /// @notice One channel's state, as `getChannel` returns it.
    /// @param payer Who deposited and signs vouchers.
    /// @param expiry Unix seconds after which vouchers can no longer be redeemed.
    /// @param closesAt Unix seconds when a close started by the payer ends (0 = not closing).
    /// @param payee Who is paid (the node operator).
    /// @param deposit Total deposited.
    /// @param redeemed Total redeemed so far (fees included).
    struct Channel {
        address payer;
        uint64 expiry;
        address payee;
        uint64 closesAt;
        uint128 deposit;
        uint128 redeemed;
    }

    /// @dev What a redemption reads and writes, packed in one storage slot (one cold read and one write per
    ///      channel in `redeemMany`). 88-bit amounts hold 3e26 wei (more ether than exists); 40-bit times last
    ///      until the year 36812. The payer is the channel id's top 160 bits, the payee the mapping's key.
    struct Slot {
        uint88 deposit;
        uint88 redeemed;
        uint40 expiry;
        uint40 closesAt;
    }

    /// @notice A voucher as passed to `redeemMany`, with the payer's EIP-712 signature in the compact EIP-2098 form
    ///         (`r`, and `s` with the parity of `v` in its top bit): a static struct, 128 bytes of calldata.
    /// @param channelId The channel.
    /// @param cumulativeAmount Total the payer owes the payee on this channel so far.
    /// @param r The signature's `r`.
    /// @param vs The signature's `s`, with `v - 27` in the top bit.
    struct SignedVoucher {
        bytes32 channelId;
        uint256 cumulativeAmount;
        bytes32 r;
        bytes32 vs;
    }

    /// @dev Channels by payee, then id: a `redeemMany` batch finds only its payee's channels, so the payee check
    ///      costs no storage read.
    mapping(address payee => mapping(bytes32 channelId => Slot)) private _slots;
    /// @dev Each channel's payee, for the calls that name only the channel.
    mapping(bytes32 channelId => address payee) private _payees;
    uint96 private _nonce;
    /// @dev Sum over channels of (deposit - redeemed) while not withdrawn: what payers and payees can still claim.
    uint256 private _outstanding;

    /// @notice A channel was opened.
    /// @param channelId The new channel's id.
    /// @param payer The payer.
    /// @param payee The payee.
    /// @param deposit The initial deposit.
    /// @param expiry Unix seconds after which vouchers can no longer be redeemed.
    event ChannelOpened(
        bytes32 indexed channelId, address indexed payer, address indexed payee, uint256 deposit, uint256 expiry
    );
    /// @notice A channel's deposit grew.
    /// @param channelId The channel.
    /// @param amount The amount added.
    /// @param deposit The new deposit.
    event ChannelToppedUp(bytes32 indexed channelId, uint256 amount, uint256 deposit);
    /// @notice A voucher was redeemed. The payee, the fee and the gas are the batch's (`BatchRedeemed`, also
    ///         emitted by `redeem` for its batch of one).
    /// @param channelId The channel.
    /// @param cumulativeAmount The voucher's cumulative amount (now the channel's redeemed total).
    /// @param amount The newly redeemed amount (payee share plus fee).
    event Redeemed(bytes32 indexed channelId, uint256 cumulativeAmount, uint256 amount);
    /// @notice A redemption transaction (`redeemMany`, or `redeem` as a batch of one) finished.
    /// @param payee The payee paid.
    /// @param channels Number of vouchers in the batch.
    /// @param amount Total newly redeemed (payee share plus fees).
    /// @param fee Total protocol fee.
    /// @param gasUsed Execution gas of the whole batch up to this event.
    event BatchRedeemed(address indexed payee, uint256 channels, uint256 amount, uint256 fee, uint256 gasUsed);
    /// @notice The payer started closing a channel.
    /// @param channelId The channel.
    /// @param closesAt Unix seconds when the payee's last chance to redeem ends.
    event ChannelClosing(bytes32 indexed channelId, uint256 closesAt);
    /// @notice The payer took back what was not redeemed; the channel is finished.
    /// @param channelId The channel.
    /// @param payer The payer.
    /// @param amount The refund.
    event ChannelWithdrawn(bytes32 indexed channelId, address indexed payer, uint256 amount);

    /// @notice No channel with this id.
    /// @param channelId The id.
    error ChannelNotFound(bytes32 channelId);
    /// @notice Only the channel's payer may do this.
    /// @param channelId The channel.
    /// @param caller The caller.
    error ChannelNotPayer(bytes32 channelId, address caller);
    /// @notice The channel can no longer be redeemed or topped up (expired, closed, or withdrawn).
    /// @param channelId The channel.
    /// @param deadline When it stopped being redeemable.
    error ChannelExpired(bytes32 channelId, uint256 deadline);
    /// @notice The payer cannot withdraw before the channel's redemption deadline.
    /// @param channelId The channel.
    /// @param deadline When withdrawal becomes possible.
    error ChannelStillOpen(bytes32 channelId, uint256 deadline);
    /// @notice The voucher asks for more than the channel holds.
    /// @param channelId The channel.
    /// @param deposit The channel's deposit.
    /// @param needed The voucher's cumulative amount.
    error ChannelInsufficientDeposit(bytes32 channelId, uint256 deposit, uint256 needed);
    /// @notice Invalid arguments to `open`, `topUp` or the constructor.
    error ChannelInvalidParams();
    /// @notice The channel is already closing.
    /// @param channelId The channel.
    error ChannelAlreadyClosing(bytes32 channelId);
    /// @notice The voucher was not signed by the channel's payer.
    /// @param channelId The channel.
    /// @param signer Who signed it.
    error VoucherInvalidSigner(bytes32 channelId, address signer);
    /// @notice A `redeemMany` batch mixes payees.
    /// @param channelId The first channel whose payee differs.
    error VoucherPayeeMismatch(bytes32 channelId);
    /// @notice An empty `redeemMany` batch.
    error VoucherEmptyBatch();
    /// @notice Sending ETH failed.
    /// @param to The recipient.
    /// @param amount The amount.
    error ChannelTransferFailed(address to, uint256 amount);

    /// @param rewards The ValidatorRewards contract that receives fees.
    /// @param feeBps Protocol fee in basis points (at most 10,000).
    /// @param challengeWindow Seconds the payee keeps to redeem after `startClose`: at least one hour, at most a year.
    constructor(IValidatorRewards rewards, uint256 feeBps, uint256 challengeWindow) EIP712("MLBridge", "1") {
        if (
            feeBps > BPS || address(rewards) == address(0) || challengeWindow < MIN_CHALLENGE_WINDOW
                || challengeWindow > MAX_CHALLENGE_WINDOW
        ) revert ChannelInvalidParams();
        REWARDS = rewards;
        FEE_BPS = feeBps;
        CHALLENGE_WINDOW = challengeWindow;
    }

    /// @notice Open a channel to `payee` with the attached ETH as deposit.
    /// @param payee The node operator to pay.
    /// @param expiry Unix seconds after which vouchers can no longer be redeemed (in the future, below 2^40).
    /// @return channelId The new channel's id: the payer's address in the top 160 bits, a counter below.
    function open(address payee, uint64 expiry) external payable returns (bytes32 channelId) {
        if (payee == address(0) || payee == msg.sender || msg.value == 0 || msg.value > type(uint88).max) {
            revert ChannelInvalidParams();
        }
        if (expiry <= block.timestamp || expiry > type(uint40).max) revert ChannelInvalidParams();
        channelId = bytes32((uint256(uint160(msg.sender)) << 96) | _nonce++);
        _payees[channelId] = payee;
        _slots[payee][channelId] = Slot({deposit: uint88(msg.value), redeemed: 0, expiry: uint40(expiry), closesAt: 0});
        _outstanding += msg.value;
        emit ChannelOpened(channelId, msg.sender, payee, msg.value, expiry);
    }

    /// @notice Add the attached ETH to a channel's deposit. Only the payer, only while the channel is redeemable and
    ///         not closing.
    /// @param channelId The channel.
    function topUp(bytes32 channelId) external payable {
        Slot storage ch = _existing(channelId);
        _onlyPayer(channelId);
        uint256 deadline = _deadline(ch);
        if (block.timestamp >= deadline || ch.closesAt != 0) revert ChannelExpired(channelId, deadline);
        uint256 deposit = uint256(ch.deposit) + msg.value;
        if (msg.value == 0 || deposit > type(uint88).max) revert ChannelInvalidParams();
        ch.deposit = uint88(deposit);
        _outstanding += msg.value;
        emit ChannelToppedUp(channelId, msg.value, deposit);
    }

    /// @notice Redeem a voucher: pays the payee `cumulativeAmount - redeemed` minus the protocol fee. Anyone may
    ///         submit it (funds only ever go to the payee). A voucher at or below the redeemed total pays nothing.
    /// @param channelId The channel.
    /// @param cumulativeAmount The voucher's cumulative amount.
    /// @param signature The payer's EIP-712 signature over `Voucher{channelId, cumulativeAmount}`.
    /// @return amount Newly redeemed amount (payee share plus fee).
    function redeem(bytes32 channelId, uint256 cumulativeAmount, bytes calldata signature)
        external
        nonReentrant
        returns (uint256 amount)
    {
        uint256 gasStart = gasleft();
        Slot storage ch = _existing(channelId);
        (address signer,,) = ECDSA.tryRecoverCalldata(voucherDigest(channelId, cumulativeAmount), signature);
        amount = _apply(ch, channelId, cumulativeAmount, signer);
        if (amount == 0) return 0;
        emit Redeemed(channelId, cumulativeAmount, amount);
        _outstanding -= amount;
        uint256 fee = amount * FEE_BPS / BPS;
        address payee = _payees[channelId];
        _pay(payee, amount - fee, fee);
        emit BatchRedeemed(payee, 1, amount, fee, gasStart - gasleft());
    }

    /// @notice Redeem many vouchers of one payee in one transaction, with one transfer to the payee and one fee
    ///         deposit. Vouchers that add nothing (already redeemed) are skipped, so a resubmitted batch is safe.
    /// @param vouchers The vouchers; every channel must have the same payee (the first voucher's channel's).
    /// @return total Newly redeemed amount over the batch (payee share plus fees).
    function redeemMany(SignedVoucher[] calldata vouchers) external nonReentrant returns (uint256 total) {
        uint256 gasStart = gasleft();
        if (vouchers.length == 0) revert VoucherEmptyBatch();
        _existing(vouchers[0].channelId);
        address payee = _payees[vouchers[0].channelId];
        mapping(bytes32 => Slot) storage mine = _slots[payee];
        for (uint256 i = 0; i < vouchers.length; ++i) {
            SignedVoucher calldata v = vouchers[i];
            bytes32 id = v.channelId;
            Slot storage ch = mine[id];
            uint256 cumulativeAmount = v.cumulativeAmount;
            // An unrecoverable signature is signer 0: refused below, naming the channel.
            (address signer,,) = ECDSA.tryRecover(voucherDigest(id, cumulativeAmount), v.r, v.vs);
            uint256 amount = _apply(ch, id, cumulativeAmount, signer);
            if (amount == 0) continue;
            total += amount;
            emit Redeemed(id, cumulativeAmount, amount);
        }
        if (total == 0) return 0;
        _outstanding -= total;
        // One fee on the batch's total (rounded down once, not per channel).
        uint256 totalFee = total * FEE_BPS / BPS;
        _pay(payee, total - totalFee, totalFee);
        emit BatchRedeemed(payee, vouchers.length, total, totalFee, gasStart - gasleft());
    }

    /// @notice Start closing a channel: the payee keeps `CHALLENGE_WINDOW` seconds (or until expiry, if sooner) to
    ///         redeem, then the payer can withdraw the rest.
    /// @param channelId The channel.
    function startClose(bytes32 channelId) external {
        Slot storage ch = _existing(channelId);
        _onlyPayer(channelId);
        if (ch.closesAt != 0) revert ChannelAlreadyClosing(channelId);
        uint256 deadline = _deadline(ch);
        if (block.timestamp >= deadline) revert ChannelExpired(channelId, deadline);
        // Below 2^40 for the next 30,000 years: the window is at most a year.
        uint256 closesAt = block.timestamp + CHALLENGE_WINDOW;
        ch.closesAt = uint40(closesAt);
        uint256 expiry = ch.expiry;
        emit ChannelClosing(channelId, closesAt < expiry ? closesAt : expiry);
    }

    /// @notice After the redemption deadline (close window end or expiry), send the payer what was not redeemed.
    /// @param channelId The channel.
    /// @return amount The refund.
    function withdraw(bytes32 channelId) external nonReentrant returns (uint256 amount) {
        Slot storage ch = _existing(channelId);
        _onlyPayer(channelId);
        uint256 deadline = _deadline(ch);
        if (block.timestamp < deadline) revert ChannelStillOpen(channelId, deadline);
        amount = uint256(ch.deposit) - ch.redeemed;
        // Finished: nothing left, and the deadline is in the past so no voucher can be redeemed any more.
        ch.deposit = ch.redeemed;
        _outstanding -= amount;
        emit ChannelWithdrawn(channelId, msg.sender, amount);
        if (amount > 0) _send(msg.sender, amount);
    }

    /// @notice A channel's state.
    /// @param channelId The channel.
    /// @return c The channel (all zero if it does not exist).
    function getChannel(bytes32 channelId) external view returns (Channel memory c) {
        address payee = _payees[channelId];
        if (payee == address(0)) return c;
        Slot storage ch = _slots[payee][channelId];
        c = Channel({
            payer: _payerOf(channelId),
            expiry: ch.expiry,
            payee: payee,
            closesAt: ch.closesAt,
            deposit: ch.deposit,
            redeemed: ch.redeemed
        });
    }

    /// @notice When a channel stops being redeemable (close window end or expiry, whichever is first).
    /// @param channelId The channel.
    /// @return Unix seconds.
    function redeemDeadline(bytes32 channelId) external view returns (uint256) {
        return _deadline(_existing(channelId));
    }

    /// @notice The EIP-712 digest a payer signs for a voucher.
    /// @param channelId The channel.
    /// @param cumulativeAmount The cumulative amount.
    /// @return The digest.
    function voucherDigest(bytes32 channelId, uint256 cumulativeAmount) public view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(VOUCHER_TYPEHASH, channelId, cumulativeAmount)));
    }

    /// @notice The EIP-712 domain separator (name "MLBridge", version "1", this chain, this contract).
    /// @return The separator.
    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    /// @notice What channels still hold for payers and payees (equals this contract's balance).
    /// @return The outstanding total in wei.
    function outstanding() external view returns (uint256) {
        return _outstanding;
    }

    /// @dev Checks and effects of one redemption of a voucher `signer` signed (0 = no valid signature); returns the newly redeemed amount (0 if
    ///      the voucher adds nothing). The caller takes the amount off `_outstanding`. The slot is read once: only
    ///      this payee's channels are found under `ch` (an empty slot is another payee's channel or none at all).
    function _apply(Slot storage ch, bytes32 channelId, uint256 cumulativeAmount, address signer)
        private
        returns (uint256 amount)
    {
        // One SLOAD and one SSTORE of the packed slot (layout of `Slot`: deposit bits 0-87, redeemed 88-175, expiry
        // 176-215, closesAt 216-255).
        uint256 word;
        assembly ("memory-safe") {
            word := sload(ch.slot)
        }
        uint256 expiry = uint40(word >> 176);
        if (expiry == 0) {
            if (_payees[channelId] == address(0)) revert ChannelNotFound(channelId);
            revert VoucherPayeeMismatch(channelId);
        }
        uint256 closesAt = word >> 216;
        uint256 deadline = closesAt != 0 && closesAt < expiry ? closesAt : expiry;
        if (block.timestamp >= deadline) revert ChannelExpired(channelId, deadline);
        uint256 redeemed = uint88(word >> 88);
        if (cumulativeAmount <= redeemed) return 0;
        uint256 deposit = uint88(word);
        if (cumulativeAmount > deposit) revert ChannelInsufficientDeposit(channelId, deposit, cumulativeAmount);
        if (signer != _payerOf(channelId)) revert VoucherInvalidSigner(channelId, signer);
        amount = cumulativeAmount - redeemed;
        // At most the deposit, which fits 88 bits.
        word = (word & ~(uint256(type(uint88).max) << 88)) | (cumulativeAmount << 88);
        assembly ("memory-safe") {
            sstore(ch.slot, word)
        }
    }

    function _pay(address payee, uint256 payeeShare, uint256 fee) private {
        if (fee > 0) REWARDS.depositFees{value: fee}();
        if (payeeShare > 0) _send(payee, payeeShare);
    }

    function _existing(bytes32 channelId) private view returns (Slot storage ch) {
        address payee = _payees[channelId];
        if (payee == address(0)) revert ChannelNotFound(channelId);
        ch = _slots[payee][channelId];
    }

    function _payerOf(bytes32 channelId) private pure returns (address) {
        return address(uint160(uint256(channelId) >> 96));
    }

    function _onlyPayer(bytes32 channelId) private view {
        if (_payerOf(channelId) != msg.sender) revert ChannelNotPayer(channelId, msg.sender);
    }

    function _deadline(Slot storage ch) private view returns (uint256) {
        uint256 closesAt = ch.closesAt;
        uint256 expiry = ch.expiry;
        return closesAt != 0 && closesAt < expiry ? closesAt : expiry;
    }

    function _send(address to, uint256 amount) private {
        (bool ok,) = to.call{value: amount}("");
        if (!ok) revert ChannelTransferFailed(to, amount);
    }
}
