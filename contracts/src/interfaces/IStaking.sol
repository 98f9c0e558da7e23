// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

/// @title IStaking
/// @notice What other ML Bridge contracts need from `Staking`.
interface IStaking {
    /// @notice Role of a registered address.
    enum Role {
        None,
        Node,
        Validator
    }

    /// @notice Seconds between an unbonding request and the earliest withdrawal.
    /// @return The delay.
    function UNBONDING_DELAY() external view returns (uint256);

    /// @notice Role of `account` (None if unregistered).
    /// @param account The address to look up.
    /// @return The account's role.
    function roleOf(address account) external view returns (Role);

    /// @notice Active (bonded, not unbonding) stake of `account` in wei.
    /// @param account The address to look up.
    /// @return The active stake.
    function stakeOf(address account) external view returns (uint256);

    /// @notice Everything slashable of `account`: active plus unbonding stake, in wei.
    /// @param account The address to look up.
    /// @return The bonded total.
    function bondedOf(address account) external view returns (uint256);

    /// @notice Whether `account` is a validator with at least the minimum validator stake.
    /// @param account The address to look up.
    /// @return True if it is an active validator.
    function isActiveValidator(address account) external view returns (bool);

    /// @notice Whether `account` is a node with at least the minimum node stake and nothing unbonding.
    /// @param account The address to look up.
    /// @return True if it is an active node.
    function isActiveNode(address account) external view returns (bool);

    /// @notice Voting and reward weight of `account` now: its active stake if it is an active validator, else 0.
    /// @param account The address to look up.
    /// @return The weight in wei.
    function validatorStakeOf(address account) external view returns (uint256);

    /// @notice Voting and reward weight of `account` at the end of block `blockNumber` (a past block).
    /// @param account The address to look up.
    /// @param blockNumber A block before the current one.
    /// @return The weight in wei.
    function validatorStakeAt(address account, uint256 blockNumber) external view returns (uint256);

    /// @notice Total weight of all active validators at the end of block `blockNumber` (a past block).
    /// @param blockNumber A block before the current one.
    /// @return The total in wei.
    function totalValidatorStakeAt(uint256 blockNumber) external view returns (uint256);

    /// @notice Slash up to `amount` from `account` (active stake first, then unbonding) and send it to the caller.
    /// @dev Only the Disputes contract may call this.
    /// @param account The slashed participant.
    /// @param amount The amount to slash in wei.
    /// @return slashed The amount actually slashed (at most what the account holds).
    function slash(address account, uint256 amount) external returns (uint256 slashed);
}
