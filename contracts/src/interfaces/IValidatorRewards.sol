// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

/// @title IValidatorRewards
/// @notice What `PaymentChannels` needs from `ValidatorRewards`.
interface IValidatorRewards {
    /// @notice Add the attached ETH to the fees of the current epoch.
    function depositFees() external payable;
}
