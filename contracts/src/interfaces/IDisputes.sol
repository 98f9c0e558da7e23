// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

/// @title IDisputes
/// @notice What `Staking` needs from `Disputes`.
interface IDisputes {
    /// @notice Whether `account` may not withdraw stake now: it is a node with an open dispute against it, or a
    ///         validator that challenged or voted in a dispute whose vote has not ended.
    /// @param account The participant.
    /// @return True while its withdrawals are locked.
    function isLocked(address account) external view returns (bool);

    /// @notice The longest a receipt can keep a node exposed: audit window + reveal window + voting period, seconds.
    /// @dev Staking's unbonding delay must be longer, so no node can withdraw before a challenge of its last
    ///      receipts could have been opened and decided.
    /// @return Seconds.
    function disputeLifetime() external view returns (uint256);
}
