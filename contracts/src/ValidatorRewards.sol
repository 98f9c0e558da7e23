// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {IStaking} from "./interfaces/IStaking.sol";
import {IValidatorRewards} from "./interfaces/IValidatorRewards.sol";

/// @title ValidatorRewards
/// @notice Protocol fees from PaymentChannels, shared per epoch among the validators that attested in that epoch,
///         pro rata to their stake at attestation time. Epochs are `EPOCH_LENGTH` blocks long; an epoch's fees
///         become claimable when it ends. Fees of an epoch that nobody attested can be rolled into the current one.
/// @dev Per-validator attested epochs are kept in a list with a claim cursor, so `claim()` only walks unclaimed
///      epochs. Integer division leaves at most (attesters - 1) wei of dust per epoch in the contract.
contract ValidatorRewards is IValidatorRewards, ReentrancyGuardTransient {
    /// @notice The staking contract (validator set and stakes).
    IStaking public immutable STAKING;
    /// @notice Epoch length in blocks.
    uint256 public immutable EPOCH_LENGTH;
    /// @notice Block at which epoch 0 starts.
    uint256 public immutable GENESIS_BLOCK;

    struct Epoch {
        uint256 fees;
        uint256 totalWeight;
        uint256 claimed;
    }

    mapping(uint256 => Epoch) private _epochs;
    /// @dev validator => epoch => weight (stake at attestation; 0 = did not attest).
    mapping(address => mapping(uint256 => uint256)) private _weights;
    mapping(address => uint256[]) private _attestedEpochs;
    mapping(address => uint256) private _claimCursor;
    mapping(address => uint256) private _claimedTotal;
    uint256 private _feesReceived;
    uint256 private _claimedAll;

    /// @notice Fees arrived for an epoch.
    /// @param epoch The epoch credited.
    /// @param from Who sent them (PaymentChannels).
    /// @param amount The amount.
    event FeesReceived(uint256 indexed epoch, address indexed from, uint256 amount);
    /// @notice A validator attested for an epoch.
    /// @param epoch The epoch.
    /// @param validator The validator.
    /// @param jobsChecked How many jobs it re-executed.
    /// @param resultsRoot Merkle root of its results (evidence for later disputes).
    /// @param weight Its stake at attestation (its share weight).
    event Attested(
        uint256 indexed epoch, address indexed validator, uint256 jobsChecked, bytes32 resultsRoot, uint256 weight
    );
    /// @notice A validator claimed rewards.
    /// @param validator The validator.
    /// @param amount The amount sent.
    /// @param throughEpoch The last epoch included.
    event Claimed(address indexed validator, uint256 amount, uint256 throughEpoch);
    /// @notice Fees of a finished epoch without attesters moved to the current epoch.
    /// @param fromEpoch The finished epoch.
    /// @param toEpoch The current epoch.
    /// @param amount The amount moved.
    event FeesRolledOver(uint256 indexed fromEpoch, uint256 indexed toEpoch, uint256 amount);

    /// @notice Only active validators may attest.
    /// @param account The caller.
    error RewardsNotValidator(address account);
    /// @notice Attestations are only accepted for the current epoch.
    /// @param epoch The epoch given.
    /// @param current The current epoch.
    error RewardsWrongEpoch(uint256 epoch, uint256 current);
    /// @notice One attestation per validator per epoch.
    /// @param epoch The epoch.
    /// @param validator The validator.
    error RewardsAlreadyAttested(uint256 epoch, address validator);
    /// @notice Nothing to claim yet.
    /// @param validator The validator.
    error RewardsNothingToClaim(address validator);
    /// @notice The epoch cannot be rolled over (not finished, has attesters, or no fees).
    /// @param epoch The epoch.
    error RewardsCannotRollOver(uint256 epoch);
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
        uint256 epoch = currentEpoch();
        _epochs[epoch].fees += msg.value;
        _feesReceived += msg.value;
        emit FeesReceived(epoch, msg.sender, msg.value);
    }

    /// @notice Attest to the current epoch's re-execution work; the caller's current stake becomes its share weight.
    /// @param epoch Must be the current epoch.
    /// @param jobsChecked How many jobs were re-executed.
    /// @param resultsRoot Merkle root over (jobId, outputHash, verdict) of the checked jobs.
    function attest(uint256 epoch, uint256 jobsChecked, bytes32 resultsRoot) external {
        uint256 current = currentEpoch();
        if (epoch != current) revert RewardsWrongEpoch(epoch, current);
        if (!STAKING.isActiveValidator(msg.sender)) revert RewardsNotValidator(msg.sender);
        if (_weights[msg.sender][epoch] != 0) revert RewardsAlreadyAttested(epoch, msg.sender);
        uint256 weight = STAKING.stakeOf(msg.sender);
        _weights[msg.sender][epoch] = weight;
        _epochs[epoch].totalWeight += weight;
        _attestedEpochs[msg.sender].push(epoch);
        emit Attested(epoch, msg.sender, jobsChecked, resultsRoot, weight);
    }

    /// @notice Claim the caller's share of every finished epoch it attested and has not claimed.
    /// @return amount The amount sent.
    function claim() external nonReentrant returns (uint256 amount) {
        uint256 current = currentEpoch();
        uint256[] storage epochs = _attestedEpochs[msg.sender];
        uint256 cursor = _claimCursor[msg.sender];
        uint256 last;
        while (cursor < epochs.length && epochs[cursor] < current) {
            uint256 e = epochs[cursor];
            uint256 share = _share(msg.sender, e);
            _epochs[e].claimed += share;
            amount += share;
            last = e;
            ++cursor;
        }
        if (cursor == _claimCursor[msg.sender]) revert RewardsNothingToClaim(msg.sender);
        _claimCursor[msg.sender] = cursor;
        _claimedTotal[msg.sender] += amount;
        _claimedAll += amount;
        emit Claimed(msg.sender, amount, last);
        if (amount > 0) _send(msg.sender, amount);
    }

    /// @notice Move the fees of a finished epoch that nobody attested into the current epoch.
    /// @param epoch The finished epoch.
    function rollOver(uint256 epoch) external {
        uint256 current = currentEpoch();
        Epoch storage e = _epochs[epoch];
        if (epoch >= current || e.totalWeight != 0 || e.fees == 0) revert RewardsCannotRollOver(epoch);
        uint256 amount = e.fees;
        e.fees = 0;
        _epochs[current].fees += amount;
        emit FeesRolledOver(epoch, current, amount);
    }

    /// @notice The current epoch number.
    /// @return The epoch.
    function currentEpoch() public view returns (uint256) {
        return (block.number - GENESIS_BLOCK) / EPOCH_LENGTH;
    }

    /// @notice Rewards of `validator` claimable now (finished epochs not yet claimed).
    /// @param validator The validator.
    /// @return amount The claimable amount.
    function pendingRewards(address validator) public view returns (uint256 amount) {
        uint256 current = currentEpoch();
        uint256[] storage epochs = _attestedEpochs[validator];
        for (uint256 i = _claimCursor[validator]; i < epochs.length && epochs[i] < current; ++i) {
            amount += _share(validator, epochs[i]);
        }
    }

    /// @notice Everything `validator` has earned: claimed plus claimable now.
    /// @param validator The validator.
    /// @return The total earnings in wei.
    function totalEarned(address validator) external view returns (uint256) {
        return _claimedTotal[validator] + pendingRewards(validator);
    }

    /// @notice An epoch's fees, total attesting weight and claimed amount.
    /// @param epoch The epoch.
    /// @return fees Fees received for the epoch.
    /// @return totalWeight Sum of the attesters' weights.
    /// @return claimed Amount claimed from it so far.
    function epochInfo(uint256 epoch) external view returns (uint256 fees, uint256 totalWeight, uint256 claimed) {
        Epoch storage e = _epochs[epoch];
        return (e.fees, e.totalWeight, e.claimed);
    }

    /// @notice The weight `validator` attested with in `epoch` (0 if it did not attest).
    /// @param validator The validator.
    /// @param epoch The epoch.
    /// @return The weight.
    function weightOf(address validator, uint256 epoch) external view returns (uint256) {
        return _weights[validator][epoch];
    }

    /// @notice All fees ever received and all rewards ever claimed.
    /// @return received Fees received.
    /// @return claimed Rewards claimed.
    function totals() external view returns (uint256 received, uint256 claimed) {
        return (_feesReceived, _claimedAll);
    }

    function _share(address validator, uint256 epoch) private view returns (uint256) {
        Epoch storage e = _epochs[epoch];
        return e.fees * _weights[validator][epoch] / e.totalWeight;
    }

    function _send(address to, uint256 amount) private {
        (bool ok,) = to.call{value: amount}("");
        if (!ok) revert RewardsTransferFailed(to, amount);
    }
}
