// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {Checkpoints} from "@openzeppelin/contracts/utils/structs/Checkpoints.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {IStaking} from "./interfaces/IStaking.sol";
import {IDisputes} from "./interfaces/IDisputes.sol";
import {IValidatorRewards} from "./interfaces/IValidatorRewards.sol";

/// @title Staking
/// @notice Native-ETH stake for ML Bridge nodes and validators: register above a minimum stake, add stake, unbond
///         with a delay, withdraw. Only the Disputes contract can slash, and slashing reaches unbonding stake too;
///         an accused node (and a validator whose vote is running) cannot withdraw until its dispute ends, and the
///         unbonding delay is longer than a dispute's whole life, so unbonding cannot be used to escape one.
/// @dev Every address has at most one role. Validator weight (active stake of validators at or above the minimum,
///      0 otherwise) is checkpointed per block, per validator and in total, so votes and rewards weigh stake as it
///      stood at a past block and never stake added after the fact. Any decrease of a validator's stake is reported
///      to ValidatorRewards (unbonding stake earns nothing).
contract Staking is IStaking, ReentrancyGuardTransient {
    using Checkpoints for Checkpoints.Trace208;

    /// @notice Minimum stake for a node, in wei.
    uint256 public immutable MIN_NODE_STAKE;
    /// @notice Minimum stake for a validator, in wei.
    uint256 public immutable MIN_VALIDATOR_STAKE;
    /// @notice Seconds between an unbonding request and the earliest withdrawal.
    uint256 public immutable UNBONDING_DELAY;
    /// @notice Address allowed to set the Disputes contract once.
    address private immutable _deployer;

    struct Participant {
        Role role;
        uint64 unbondingReleaseAt;
        uint256 stake;
        uint256 unbonding;
        bytes peerId;
        string metadataURI;
    }

    address private _disputes;
    IValidatorRewards private _rewards;
    mapping(address => Participant) private _participants;
    /// @dev Validator weight history per account and in total, keyed by block number.
    mapping(address => Checkpoints.Trace208) private _weightHistory;
    Checkpoints.Trace208 private _totalWeightHistory;
    address[] private _activeValidators;
    mapping(address => uint256) private _activeIndexPlusOne;
    /// @dev Stake of each active validator as last counted in `_totalActiveValidatorStake`.
    mapping(address => uint256) private _lastCounted;
    uint256 private _totalActiveValidatorStake;
    uint256 private _totalBonded;
    uint256 private _totalUnbonding;

    /// @notice A node registered.
    /// @param operator The node's operator address (signs receipts and adverts).
    /// @param peerId The node's libp2p PeerId bytes.
    /// @param metadataURI Where the node describes itself.
    /// @param stake The initial stake.
    event NodeRegistered(address indexed operator, bytes peerId, string metadataURI, uint256 stake);
    /// @notice A validator registered.
    /// @param validator The validator's address.
    /// @param stake The initial stake.
    event ValidatorRegistered(address indexed validator, uint256 stake);
    /// @notice Stake was added.
    /// @param account The participant.
    /// @param amount The amount added.
    /// @param stake The new active stake.
    event StakeIncreased(address indexed account, uint256 amount, uint256 stake);
    /// @notice Stake moved from active to unbonding.
    /// @param account The participant.
    /// @param amount The amount unbonding.
    /// @param releaseAt When it can be withdrawn (unix seconds).
    event UnbondRequested(address indexed account, uint256 amount, uint256 releaseAt);
    /// @notice Unbonded stake was withdrawn.
    /// @param account The participant.
    /// @param amount The amount sent.
    event Withdrawn(address indexed account, uint256 amount);
    /// @notice Stake was slashed by the Disputes contract.
    /// @param account The slashed participant.
    /// @param amount The amount taken.
    event Slashed(address indexed account, uint256 amount);
    /// @notice The Disputes and ValidatorRewards contracts were set.
    /// @param disputes The only slasher.
    /// @param rewards Told about every validator stake decrease.
    event ModulesSet(address disputes, address rewards);

    /// @notice The account already has a role.
    /// @param account The account.
    error StakingAlreadyRegistered(address account);
    /// @notice The account has no role.
    /// @param account The account.
    error StakingNotRegistered(address account);
    /// @notice Not enough stake for the role.
    /// @param given The stake offered.
    /// @param minimum The minimum for the role.
    error StakingBelowMinimum(uint256 given, uint256 minimum);
    /// @notice A zero amount where a positive one is needed.
    error StakingZeroAmount();
    /// @notice Unbonding more than the active stake.
    /// @param requested The amount requested.
    /// @param available The active stake.
    error StakingInsufficientStake(uint256 requested, uint256 available);
    /// @notice Nothing to withdraw yet.
    /// @param releaseAt When the unbonding stake is released (0 if none).
    error StakingNothingToWithdraw(uint256 releaseAt);
    /// @notice Only the Disputes contract may do this.
    /// @param caller The caller.
    error StakingOnlyDisputes(address caller);
    /// @notice Only the deployer may set the Disputes and ValidatorRewards contracts, only once, both non-zero.
    error StakingModulesAlreadySet();
    /// @notice The unbonding delay must be longer than a dispute's whole life (audit, reveal and voting windows).
    /// @param unbondingDelay This contract's delay.
    /// @param disputeLifetime The Disputes contract's audit + reveal + voting windows.
    error StakingUnbondingTooShort(uint256 unbondingDelay, uint256 disputeLifetime);
    /// @notice Withdrawal is locked while a dispute involving the account is open.
    /// @param account The account.
    error StakingLockedByDispute(address account);
    /// @notice Stake history can only be read for past blocks.
    /// @param blockNumber The block asked for.
    /// @param current The current block.
    error StakingFutureLookup(uint256 blockNumber, uint256 current);
    /// @notice A node must give a non-empty PeerId.
    error StakingEmptyPeerId();
    /// @notice Sending ETH failed.
    /// @param to The recipient.
    /// @param amount The amount.
    error StakingTransferFailed(address to, uint256 amount);

    /// @param minNodeStake Minimum node stake in wei.
    /// @param minValidatorStake Minimum validator stake in wei.
    /// @param unbondingDelay Seconds between an unbonding request and withdrawal.
    constructor(uint256 minNodeStake, uint256 minValidatorStake, uint256 unbondingDelay) {
        MIN_NODE_STAKE = minNodeStake;
        MIN_VALIDATOR_STAKE = minValidatorStake;
        UNBONDING_DELAY = unbondingDelay;
        _deployer = msg.sender;
    }

    /// @notice Set the Disputes contract (the only slasher, and the judge of withdrawal locks) and the
    ///         ValidatorRewards contract (told of validator stake decreases). Callable once, by the deployer.
    /// @dev Refuses a Disputes contract whose dispute lifetime is not shorter than the unbonding delay.
    /// @param disputes_ The Disputes contract.
    /// @param rewards_ The ValidatorRewards contract.
    function setModules(address disputes_, address rewards_) external {
        if (msg.sender != _deployer || _disputes != address(0) || disputes_ == address(0) || rewards_ == address(0)) {
            revert StakingModulesAlreadySet();
        }
        uint256 lifetime = IDisputes(disputes_).disputeLifetime();
        if (UNBONDING_DELAY <= lifetime) revert StakingUnbondingTooShort(UNBONDING_DELAY, lifetime);
        _disputes = disputes_;
        _rewards = IValidatorRewards(rewards_);
        emit ModulesSet(disputes_, rewards_);
    }

    /// @notice Register the caller as a node operator with the attached stake.
    /// @param peerId The node's libp2p PeerId bytes.
    /// @param metadataURI Where the node describes itself (models, region, contact).
    function registerNode(bytes calldata peerId, string calldata metadataURI) external payable {
        if (peerId.length == 0) revert StakingEmptyPeerId();
        Participant storage p = _register(Role.Node, MIN_NODE_STAKE);
        p.peerId = peerId;
        p.metadataURI = metadataURI;
        emit NodeRegistered(msg.sender, peerId, metadataURI, msg.value);
    }

    /// @notice Register the caller as a validator with the attached stake.
    function registerValidator() external payable {
        _register(Role.Validator, MIN_VALIDATOR_STAKE);
        _syncValidator(msg.sender);
        emit ValidatorRegistered(msg.sender, msg.value);
    }

    /// @notice Add the attached ETH to the caller's active stake.
    function increaseStake() external payable {
        Participant storage p = _participants[msg.sender];
        if (p.role == Role.None) revert StakingNotRegistered(msg.sender);
        if (msg.value == 0) revert StakingZeroAmount();
        p.stake += msg.value;
        _totalBonded += msg.value;
        _syncValidator(msg.sender);
        emit StakeIncreased(msg.sender, msg.value, p.stake);
    }

    /// @notice Move `amount` of active stake to unbonding; it can be withdrawn after `UNBONDING_DELAY`.
    /// @dev A new request restarts the delay for everything unbonding.
    /// @param amount The amount to unbond in wei.
    function requestUnbond(uint256 amount) external {
        Participant storage p = _participants[msg.sender];
        if (p.role == Role.None) revert StakingNotRegistered(msg.sender);
        if (amount == 0) revert StakingZeroAmount();
        if (amount > p.stake) revert StakingInsufficientStake(amount, p.stake);
        p.stake -= amount;
        p.unbonding += amount;
        _totalBonded -= amount;
        _totalUnbonding += amount;
        uint256 releaseAt = block.timestamp + UNBONDING_DELAY;
        p.unbondingReleaseAt = uint64(releaseAt);
        _syncValidator(msg.sender);
        emit UnbondRequested(msg.sender, amount, releaseAt);
        _reportDecrease(msg.sender, p.role);
    }

    /// @notice Withdraw all unbonding stake whose delay has passed. Locked while the caller is the accused node of an
    ///         open dispute, or a validator whose challenge or vote is still running.
    function withdraw() external nonReentrant {
        Participant storage p = _participants[msg.sender];
        uint256 amount = p.unbonding;
        if (amount == 0 || block.timestamp < p.unbondingReleaseAt) {
            revert StakingNothingToWithdraw(amount == 0 ? 0 : p.unbondingReleaseAt);
        }
        if (_disputes != address(0) && IDisputes(_disputes).isLocked(msg.sender)) {
            revert StakingLockedByDispute(msg.sender);
        }
        p.unbonding = 0;
        _totalUnbonding -= amount;
        emit Withdrawn(msg.sender, amount);
        _send(msg.sender, amount);
    }

    /// @inheritdoc IStaking
    function slash(address account, uint256 amount) external nonReentrant returns (uint256 slashed) {
        if (msg.sender != _disputes) revert StakingOnlyDisputes(msg.sender);
        Participant storage p = _participants[account];
        uint256 fromStake = amount < p.stake ? amount : p.stake;
        uint256 rest = amount - fromStake;
        uint256 fromUnbonding = rest < p.unbonding ? rest : p.unbonding;
        p.stake -= fromStake;
        p.unbonding -= fromUnbonding;
        _totalBonded -= fromStake;
        _totalUnbonding -= fromUnbonding;
        slashed = fromStake + fromUnbonding;
        _syncValidator(account);
        emit Slashed(account, slashed);
        if (fromStake > 0) _reportDecrease(account, p.role);
        if (slashed > 0) _send(msg.sender, slashed);
    }

    /// @inheritdoc IStaking
    function roleOf(address account) external view returns (Role) {
        return _participants[account].role;
    }

    /// @inheritdoc IStaking
    function stakeOf(address account) external view returns (uint256) {
        return _participants[account].stake;
    }

    /// @inheritdoc IStaking
    function bondedOf(address account) external view returns (uint256) {
        Participant storage p = _participants[account];
        return p.stake + p.unbonding;
    }

    /// @inheritdoc IStaking
    function validatorStakeOf(address account) public view returns (uint256) {
        return isActiveValidator(account) ? _participants[account].stake : 0;
    }

    /// @inheritdoc IStaking
    function validatorStakeAt(address account, uint256 blockNumber) external view returns (uint256) {
        return _weightHistory[account].upperLookupRecent(_pastKey(blockNumber));
    }

    /// @inheritdoc IStaking
    function totalValidatorStakeAt(uint256 blockNumber) external view returns (uint256) {
        return _totalWeightHistory.upperLookupRecent(_pastKey(blockNumber));
    }

    /// @notice Unbonding stake of `account` and when it is released.
    /// @param account The participant.
    /// @return amount The unbonding amount.
    /// @return releaseAt Unix seconds when it can be withdrawn.
    function unbondingOf(address account) external view returns (uint256 amount, uint256 releaseAt) {
        Participant storage p = _participants[account];
        return (p.unbonding, p.unbondingReleaseAt);
    }

    /// @notice Registration details of a node.
    /// @param operator The node's operator address.
    /// @return peerId The libp2p PeerId bytes.
    /// @return metadataURI The metadata URI.
    function nodeInfo(address operator) external view returns (bytes memory peerId, string memory metadataURI) {
        Participant storage p = _participants[operator];
        return (p.peerId, p.metadataURI);
    }

    /// @inheritdoc IStaking
    function isActiveValidator(address account) public view returns (bool) {
        Participant storage p = _participants[account];
        return p.role == Role.Validator && p.stake >= MIN_VALIDATOR_STAKE;
    }

    /// @inheritdoc IStaking
    function isActiveNode(address account) external view returns (bool) {
        Participant storage p = _participants[account];
        // A node that is unbonding any stake is on its way out: it could withdraw before a challenge of its latest
        // receipts is revealed, so clients should not give it work.
        return p.role == Role.Node && p.stake >= MIN_NODE_STAKE && p.unbonding == 0;
    }

    /// @notice The active validator set and its total stake.
    /// @return validators Active validators.
    /// @return totalStake Their combined active stake.
    function activeValidators() external view returns (address[] memory validators, uint256 totalStake) {
        return (_activeValidators, _totalActiveValidatorStake);
    }

    /// @notice Total active and unbonding stake held (equals this contract's balance).
    /// @return bonded Active stake of everybody.
    /// @return unbonding Unbonding stake of everybody.
    function totals() external view returns (uint256 bonded, uint256 unbonding) {
        return (_totalBonded, _totalUnbonding);
    }

    /// @notice The Disputes contract.
    /// @return The address allowed to slash.
    function disputes() external view returns (address) {
        return _disputes;
    }

    /// @notice The ValidatorRewards contract.
    /// @return The address told of validator stake decreases.
    function rewards() external view returns (address) {
        return address(_rewards);
    }

    function _register(Role role, uint256 minimum) private returns (Participant storage p) {
        p = _participants[msg.sender];
        if (p.role != Role.None) revert StakingAlreadyRegistered(msg.sender);
        if (msg.value < minimum || msg.value == 0) revert StakingBelowMinimum(msg.value, minimum);
        p.role = role;
        p.stake = msg.value;
        _totalBonded += msg.value;
    }

    /// @dev The checkpoint key of a past block; the current block's weights can still change.
    function _pastKey(uint256 blockNumber) private view returns (uint48) {
        if (blockNumber >= block.number) revert StakingFutureLookup(blockNumber, block.number);
        return SafeCast.toUint48(blockNumber);
    }

    /// @dev Keep the active validator set, its total stake and the weight checkpoints in step with `account`'s stake.
    function _syncValidator(address account) private {
        uint256 indexPlusOne = _activeIndexPlusOne[account];
        if (indexPlusOne != 0) {
            // Remove the old contribution; re-add below if still active.
            _totalActiveValidatorStake -= _lastCounted[account];
            _lastCounted[account] = 0;
        }
        bool active = isActiveValidator(account);
        _checkpointWeights(account, active ? _participants[account].stake : 0);
        if (active) {
            uint256 stake = _participants[account].stake;
            _totalActiveValidatorStake += stake;
            _lastCounted[account] = stake;
            if (indexPlusOne == 0) {
                _activeValidators.push(account);
                _activeIndexPlusOne[account] = _activeValidators.length;
            }
        } else if (indexPlusOne != 0) {
            uint256 last = _activeValidators.length - 1;
            address moved = _activeValidators[last];
            _activeValidators[indexPlusOne - 1] = moved;
            _activeIndexPlusOne[moved] = indexPlusOne;
            _activeValidators.pop();
            _activeIndexPlusOne[account] = 0;
        }
    }

    /// @dev Record `account`'s new weight and the new total at this block (after `_syncValidator`'s bookkeeping of
    ///      the total, which this mirrors).
    function _checkpointWeights(address account, uint256 weight) private {
        Checkpoints.Trace208 storage history = _weightHistory[account];
        uint256 previous = history.latest();
        if (previous == weight) return;
        uint48 key = SafeCast.toUint48(block.number);
        history.push(key, SafeCast.toUint208(weight));
        _totalWeightHistory.push(key, SafeCast.toUint208(_totalWeightHistory.latest() - previous + weight));
    }

    /// @dev Tell ValidatorRewards that a validator's active stake went down (our own trusted contract).
    function _reportDecrease(address account, Role role) private {
        if (role == Role.Validator && address(_rewards) != address(0)) _rewards.stakeReduced(account);
    }

    function _send(address to, uint256 amount) private {
        (bool ok,) = to.call{value: amount}("");
        if (!ok) revert StakingTransferFailed(to, amount);
    }
}
