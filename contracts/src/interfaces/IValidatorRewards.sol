// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

/// @title IValidatorRewards
/// @notice What `PaymentChannels` and `Staking` need from `ValidatorRewards`.
interface IValidatorRewards {
    /// @notice Add the attached ETH to the fees not yet allocated to an attested epoch.
    function depositFees() external payable;

    /// @notice A validator's stake went down (unbonding or slashing): its weight in the current epoch is cut to
    ///         what it still has, so unbonding stake earns nothing.
    /// @dev Only the Staking contract may call this.
    /// @param validator The validator whose stake went down.
    function stakeReduced(address validator) external;
}
