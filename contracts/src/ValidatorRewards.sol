// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {IStaking} from "./interfaces/IStaking.sol";
import {IValidatorRewards} from "./interfaces/IValidatorRewards.sol";

/// @title ValidatorRewards
/// @notice Protocol fees from PaymentChannels, shared per epoch among the validators that attested in that epoch,
///         pro rata to their stake checkpointed at the epoch's start. Epochs are `EPOCH_LENGTH` blocks long. When an
///         attested epoch ends, every fee not yet allocated (its own and those of earlier epochs nobody attested)
///         becomes its pot, so unattested fees roll forward by themselves to the next attested epoch.
/// @dev A validator's weight in an epoch is the smallest of its checkpointed stake at the end of the blocks before
///      this epoch and the previous one start (stake must have been bonded for a whole epoch) and its stake when it
///      attests; Staking reports every later decrease (unbonding, slashing)
///      and the weight follows it down, so unbonding stake earns nothing. Pots are finalized lazily by the first
///      call after their epoch ends; views compute them the same way. `claim(maxEpochs)` walks at most `maxEpochs`
///      epochs, so no validator's rewards can grow too large to claim. Integer division leaves at most
///      (attesters - 1) wei of dust per epoch in the contract.
contract ValidatorRewards is IValidatorRewards, ReentrancyGuardTransient {
    /// @notice The staking contract (validator set and checkpointed stakes).
    IStaking public immutable STAKING;
    /// @notice Epoch length in blocks.
    uint256 public immutable EPOCH_LENGTH;
    /// @notice Block at which epoch 0 starts.
    uint256 public immutable GENESIS_BLOCK;

    struct Epoch {
        uint256 pot;
        uint256 totalWeight;
    }

    struct Attestation {
        uint128 weight;
        bool attested;
    }

    mapping(uint256 => Epoch) private _epochs;
    mapping(address => mapping(uint256 => Attestation)) private _attestations;
    mapping(address => uint256[]) private _attestedEpochs;
    mapping(address => uint256) private _claimCursor;
    mapping(address => uint256) private _claimedTotal;
    uint256 private _feesReceived;
    uint256 private _allocated;
    uint256 private _claimedAll;
    /// @dev The attested epoch whose pot is not finalized yet, plus one (0 = none). At most one: attestations are
    ///      only for the current epoch and every entry point finalizes a finished one first.
    uint256 private _openEpochPlusOne;

    /// @notice Fees arrived; they wait for the next attested epoch to end.
    /// @param epoch The current epoch.
    /// @param from Who sent them (PaymentChannels).
    /// @param amount The amount.
    event FeesReceived(uint256 indexed epoch, address indexed from, uint256 amount);
    /// @notice An attested epoch ended and took every unallocated fee as its pot.
    /// @param epoch The epoch.
    /// @param pot The fees its attesters share.
    /// @param totalWeight The sum of its attesters' weights.
    event EpochFinalized(uint256 indexed epoch, uint256 pot, uint256 totalWeight);
    /// @notice A validator attested for an epoch.
    /// @param epoch The epoch.
    /// @param validator The validator.
    /// @param jobsChecked How many jobs it re-executed.
    /// @param resultsRoot Merkle root of its results (evidence for later disputes).
    /// @param weight Its share weight (stake at the epoch's start, or less if it has less now).
    event Attested(
        uint256 indexed epoch, address indexed validator, uint256 jobsChecked, bytes32 resultsRoot, uint256 weight
    );
    /// @notice A validator's weight in the current epoch went down with its stake.
    /// @param epoch The epoch.
    /// @param validator The validator.
    /// @param weight Its new weight.
    event WeightReduced(uint256 indexed epoch, address indexed validator, uint256 weight);
    /// @notice A validator claimed rewards.
    /// @param validator The validator.
    /// @param amount The amount sent.
    /// @param epochs Number of epochs claimed.
    /// @param throughEpoch The last epoch included.
    event Claimed(address indexed validator, uint256 amount, uint256 epochs, uint256 throughEpoch);

    /// @notice Only active validators may attest.
    /// @param account The caller.
    error RewardsNotValidator(address account);
    /// @notice The validator had no stake when the epoch started, so it has no weight in it.
    /// @param epoch The epoch.
    /// @param validator The validator.
    error RewardsNoStakeAtEpochStart(uint256 epoch, address validator);
    /// @notice Attestations are only accepted for the current epoch.
    /// @param epoch The epoch given.
    /// @param current The current epoch.
    error RewardsWrongEpoch(uint256 epoch, uint256 current);
    /// @notice One attestation per validator per epoch.
    /// @param epoch The epoch.
    /// @param validator The validator.
    error RewardsAlreadyAttested(uint256 epoch, address validator);
    /// @notice Nothing to claim yet (or `maxEpochs` is zero).
    /// @param validator The validator.
    error RewardsNothingToClaim(address validator);
    /// @notice Only the Staking contract reports stake decreases.
    /// @param caller The caller.
    error RewardsOnlyStaking(address caller);
    /// @notice Invalid constructor arguments.
    error RewardsInvalidParams();
    /// @notice Sending ETH failed.
    /// @param to The recipient.
    /// @param amount The amount.
    error RewardsTransferFailed(address to, uint256 amount);

    /// @param staking The Staking contract.
    /// @param epochLength Epoch length in blocks (at least 1).
    constructor(IStaking staking, uint256 epochLength) {
        if (epochLength == 0 || address(staking) == address(0)) revert RewardsInvalidParams();
        STAKING = staking;
        EPOCH_LENGTH = epochLength;
        GENESIS_BLOCK = block.number;
    }

    /// @inheritdoc IValidatorRewards
    function depositFees() external payable {
        _finalizeEnded();
        _feesReceived += msg.value;
        emit FeesReceived(currentEpoch(), msg.sender, msg.value);
    }

    /// @notice Attest to the current epoch's re-execution work. The caller's weight is its stake checkpointed at the
    ///         epoch's start, if it was bonded since the previous epoch's start (the least of the two, or its current
    ///         stake if lower), and follows any later decrease in this epoch.
    /// @param epoch Must be the current epoch.
    /// @param jobsChecked How many jobs were re-executed.
    /// @param resultsRoot Merkle root over (jobId, outputHash, verdict) of the checked jobs.
    function attest(uint256 epoch, uint256 jobsChecked, bytes32 resultsRoot) external {
        _finalizeEnded();
        uint256 current = currentEpoch();
        if (epoch != current) revert RewardsWrongEpoch(epoch, current);
        if (!STAKING.isActiveValidator(msg.sender)) revert RewardsNotValidator(msg.sender);
        Attestation storage a = _attestations[msg.sender][epoch];
        if (a.attested) revert RewardsAlreadyAttested(epoch, msg.sender);
        uint256 weight = attestWeight(msg.sender, epoch);
        if (weight == 0) revert RewardsNoStakeAtEpochStart(epoch, msg.sender);
        a.weight = SafeCast.toUint128(weight);
        a.attested = true;
        _epochs[epoch].totalWeight += weight;
        _attestedEpochs[msg.sender].push(epoch);
        if (_openEpochPlusOne == 0) _openEpochPlusOne = epoch + 1;
        emit Attested(epoch, msg.sender, jobsChecked, resultsRoot, weight);
    }

    /// @inheritdoc IValidatorRewards
    function stakeReduced(address validator) external {
        if (msg.sender != address(STAKING)) revert RewardsOnlyStaking(msg.sender);
        _finalizeEnded();
        uint256 epoch = currentEpoch();
        Attestation storage a = _attestations[validator][epoch];
        uint256 weight = a.weight;
        uint256 remaining = STAKING.validatorStakeOf(validator);
        if (weight <= remaining) return;
        a.weight = SafeCast.toUint128(remaining);
        _epochs[epoch].totalWeight -= weight - remaining;
        emit WeightReduced(epoch, validator, remaining);
    }

    /// @notice Claim the caller's share of up to `maxEpochs` finished epochs it attested, oldest first.
    /// @param maxEpochs How many epochs to walk at most (bounds the gas of one call).
    /// @return amount The amount sent.
    function claim(uint256 maxEpochs) external nonReentrant returns (uint256 amount) {
        _finalizeEnded();
        uint256 current = currentEpoch();
        uint256[] storage epochs = _attestedEpochs[msg.sender];
        uint256 first = _claimCursor[msg.sender];
        uint256 cursor = first;
        uint256 last;
        while (cursor < epochs.length && cursor - first < maxEpochs && epochs[cursor] < current) {
            uint256 e = epochs[cursor];
            amount += _share(msg.sender, e, _epochs[e].pot);
            last = e;
            ++cursor;
        }
        if (cursor == first) revert RewardsNothingToClaim(msg.sender);
        _claimCursor[msg.sender] = cursor;
        _claimedTotal[msg.sender] += amount;
        _claimedAll += amount;
        emit Claimed(msg.sender, amount, cursor - first, last);
        if (amount > 0) _send(msg.sender, amount);
    }

    /// @notice The weight an attestation of `validator` for `epoch` gets now: the least of its stake at the starts
    ///         of `epoch` and of the epoch before (stake must have been bonded through a whole epoch) and now.
    /// @param validator The validator.
    /// @param epoch The epoch (the current one, for an attestation).
    /// @return weight The weight in wei (0: it cannot attest).
    function attestWeight(address validator, uint256 epoch) public view returns (uint256 weight) {
        if (epoch == 0) return 0;
        weight = _stakeBefore(validator, epoch);
        uint256 before = weight == 0 ? 0 : _stakeBefore(validator, epoch - 1);
        if (before < weight) weight = before;
        uint256 now_ = STAKING.validatorStakeOf(validator);
        if (now_ < weight) weight = now_;
    }

    /// @notice The current epoch number.
    /// @return The epoch.
    function currentEpoch() public view returns (uint256) {
        return (block.number - GENESIS_BLOCK) / EPOCH_LENGTH;
    }

    /// @notice The first block of `epoch`.
    /// @param epoch The epoch.
    /// @return The block number.
    function epochStartBlock(uint256 epoch) public view returns (uint256) {
        return GENESIS_BLOCK + epoch * EPOCH_LENGTH;
    }

    /// @notice Rewards of `validator` claimable now (finished epochs not yet claimed). Walks every unclaimed epoch:
    ///         for off-chain use.
    /// @param validator The validator.
    /// @return amount The claimable amount.
    function pendingRewards(address validator) public view returns (uint256 amount) {
        uint256 current = currentEpoch();
        uint256[] storage epochs = _attestedEpochs[validator];
        for (uint256 i = _claimCursor[validator]; i < epochs.length && epochs[i] < current; ++i) {
            (uint256 pot,) = epochInfo(epochs[i]);
            amount += _share(validator, epochs[i], pot);
        }
    }

    /// @notice Number of finished epochs `validator` attested and has not claimed (what `claim` would walk).
    /// @param validator The validator.
    /// @return count The number of epochs.
    function unclaimedEpochs(address validator) external view returns (uint256 count) {
        uint256 current = currentEpoch();
        uint256[] storage epochs = _attestedEpochs[validator];
        for (uint256 i = _claimCursor[validator]; i < epochs.length && epochs[i] < current; ++i) {
            ++count;
        }
    }

    /// @notice Everything `validator` has earned: claimed plus claimable now.
    /// @param validator The validator.
    /// @return The total earnings in wei.
    function totalEarned(address validator) external view returns (uint256) {
        return _claimedTotal[validator] + pendingRewards(validator);
    }

    /// @notice An epoch's pot and total attesting weight. The pot of an attested epoch that has ended is shown even
    ///         before a transaction finalizes it; it is 0 for unattested and running epochs.
    /// @param epoch The epoch.
    /// @return pot Fees its attesters share.
    /// @return totalWeight Sum of the attesters' weights.
    function epochInfo(uint256 epoch) public view returns (uint256 pot, uint256 totalWeight) {
        Epoch storage e = _epochs[epoch];
        pot = e.pot;
        if (_pendingFinalization() == epoch + 1) pot = _feesReceived - _allocated;
        return (pot, e.totalWeight);
    }

    /// @notice Fees not in any epoch's pot yet: they go to the next attested epoch when it ends.
    /// @return The amount in wei.
    function unallocatedFees() external view returns (uint256) {
        return _pendingFinalization() != 0 ? 0 : _feesReceived - _allocated;
    }

    /// @notice The weight `validator` has in `epoch` (0 if it did not attest or unbonded everything).
    /// @param validator The validator.
    /// @param epoch The epoch.
    /// @return The weight.
    function weightOf(address validator, uint256 epoch) external view returns (uint256) {
        return _attestations[validator][epoch].weight;
    }

    /// @notice Whether `validator` attested in `epoch`.
    /// @param validator The validator.
    /// @param epoch The epoch.
    /// @return True if it did.
    function hasAttested(address validator, uint256 epoch) external view returns (bool) {
        return _attestations[validator][epoch].attested;
    }

    /// @notice All fees ever received and all rewards ever claimed.
    /// @return received Fees received.
    /// @return claimed Rewards claimed.
    function totals() external view returns (uint256 received, uint256 claimed) {
        return (_feesReceived, _claimedAll);
    }

    /// @dev Weight at the end of the block before `epoch` started (0 for a start before any block).
    function _stakeBefore(address validator, uint256 epoch) private view returns (uint256) {
        uint256 start = epochStartBlock(epoch);
        return start == 0 ? 0 : STAKING.validatorStakeAt(validator, start - 1);
    }

    /// @dev The open epoch plus one if it has ended and has weight (its pot is everything unallocated), else 0.
    function _pendingFinalization() private view returns (uint256) {
        uint256 open = _openEpochPlusOne;
        if (open == 0 || open - 1 >= currentEpoch() || _epochs[open - 1].totalWeight == 0) return 0;
        return open;
    }

    /// @dev Give a finished attested epoch every unallocated fee as its pot. An epoch whose attesters all unbonded
    ///      (weight 0) gets nothing: its fees roll forward too.
    function _finalizeEnded() private {
        uint256 open = _openEpochPlusOne;
        if (open == 0 || open - 1 >= currentEpoch()) return;
        _openEpochPlusOne = 0;
        uint256 epoch = open - 1;
        Epoch storage e = _epochs[epoch];
        if (e.totalWeight == 0) return;
        uint256 pot = _feesReceived - _allocated;
        e.pot = pot;
        _allocated += pot;
        emit EpochFinalized(epoch, pot, e.totalWeight);
    }

    function _share(address validator, uint256 epoch, uint256 pot) private view returns (uint256) {
        uint256 total = _epochs[epoch].totalWeight;
        return total == 0 ? 0 : pot * _attestations[validator][epoch].weight / total;
    }

    function _send(address to, uint256 amount) private {
        (bool ok,) = to.call{value: amount}("");
        if (!ok) revert RewardsTransferFailed(to, amount);
    }
}
