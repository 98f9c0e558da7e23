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

    /// @notice Role of `account` (None if unregistered).
    /// @param account The address to look up.
    /// @return The account's role.
    function roleOf(address account) external view returns (Role);

    /// @notice Active (bonded) stake of `account` in wei.
    /// @param account The address to look up.
    /// @return The active stake.
    function stakeOf(address account) external view returns (uint256);

    /// @notice Whether `account` is a validator with at least the minimum validator stake.
    /// @param account The address to look up.
    /// @return True if it is an active validator.
    function isActiveValidator(address account) external view returns (bool);

    /// @notice Slash up to `amount` from `account` (active stake first, then unbonding) and send it to the caller.
    /// @dev Only the Disputes contract may call this.
    /// @param account The slashed participant.
    /// @param amount The amount to slash in wei.
    /// @return slashed The amount actually slashed (at most what the account holds).
    function slash(address account, uint256 amount) external returns (uint256 slashed);
}
