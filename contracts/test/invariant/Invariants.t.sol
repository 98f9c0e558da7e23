// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

import {Fixture} from "../utils/Fixture.sol";
import {Handler} from "./Handler.sol";
import {PaymentChannels} from "../../src/PaymentChannels.sol";
import {Disputes} from "../../src/Disputes.sol";

/// @notice System invariants under random sequences of every action (forge: 256 runs x depth 64 by default).
contract InvariantsTest is Fixture {
    Handler internal handler;

    function setUp() public {
        deploySystem();
        handler = new Handler(staking, channels, rewards, disputes);
        // Two of the handler's nodes and three of its validators start registered; the others join through it.
        for (uint256 i = 0; i < 2; ++i) {
            address n = handler.nodeAt(i);
            vm.deal(n, 100 ether);
            vm.prank(n);
            staking.registerNode{value: 10 ether}(abi.encodePacked("peer", i), "ipfs://n");
        }
        for (uint256 i = 0; i < 3; ++i) {
            address v = handler.validatorAt(i);
            vm.deal(v, 100 ether);
            vm.prank(v);
            staking.registerValidator{value: (i + 2) * 1 ether}();
        }
        vm.roll(block.number + 101); // the validators' stake is old enough to vote (MIN_STAKE_AGE_BLOCKS)
        targetContract(address(handler));
    }

    /// PaymentChannels holds exactly what channels still owe their payers and payees.
    function invariant_channelBalanceEqualsOutstanding() public view {
        assertEq(address(channels).balance, channels.outstanding(), "balance == outstanding");
        assertEq(
            address(channels).balance, handler.ghostChannelsIn() - handler.ghostChannelsOut(), "balance == in - out"
        );
    }

    /// No channel ever pays out more than its deposit, and what it paid equals its highest redeemed voucher.
    function invariant_channelNeverPaysMoreThanDeposit() public view {
        uint256 n = handler.channelCount();
        for (uint256 i = 0; i < n; ++i) {
            bytes32 id = handler.channelIds(i);
            PaymentChannels.Channel memory ch = channels.getChannel(id);
            assertLe(ch.redeemed, handler.ghostDeposit(id), "redeemed <= deposit");
            assertEq(ch.redeemed, handler.ghostRedeemed(id), "redeemed == highest voucher paid");
        }
    }

    /// Vouchers never pay twice: the sum of all increments paid equals the sum of channels' redeemed totals.
    function invariant_noVoucherPaysTwice() public view {
        uint256 n = handler.channelCount();
        uint256 sum;
        for (uint256 i = 0; i < n; ++i) {
            sum += channels.getChannel(handler.channelIds(i)).redeemed;
        }
        assertEq(handler.ghostPaidByRedemptions(), sum, "paid == sum of redeemed");
    }

    /// Staking holds exactly active + unbonding stake; the validator set total matches member stakes; the
    /// checkpointed total equals the sum of checkpointed weights; stake never goes negative (uint) nor above the
    /// contract's balance.
    function invariant_stakeAccounting() public view {
        (uint256 bonded, uint256 unbonding) = staking.totals();
        assertEq(address(staking).balance, bonded + unbonding, "staking balance");
        (address[] memory set, uint256 total) = staking.activeValidators();
        uint256 sum;
        for (uint256 i = 0; i < set.length; ++i) {
            assertTrue(staking.isActiveValidator(set[i]), "set holds active validators only");
            sum += staking.stakeOf(set[i]);
        }
        assertEq(total, sum, "validator set total");
        uint256 past = block.number - 1;
        uint256 weights;
        for (uint256 i = 0; i < 4; ++i) {
            weights += staking.validatorStakeAt(handler.validatorAt(i), past);
        }
        assertEq(staking.totalValidatorStakeAt(past), weights, "checkpointed total == sum of checkpointed weights");
        uint256 held;
        for (uint256 i = 0; i < 4; ++i) {
            held += staking.bondedOf(handler.validatorAt(i));
        }
        for (uint256 i = 0; i < 3; ++i) {
            held += staking.bondedOf(handler.nodeAt(i));
        }
        assertEq(held, bonded + unbonding, "every wei of stake belongs to someone");
    }

    /// ValidatorRewards' balance equals pending rewards + unallocated fees + dust (at most one wei per validator
    /// per epoch), and rewards claimed never exceed fees received.
    function invariant_rewardsBalanceIsPendingPlusUnallocatedPlusDust() public view {
        (uint256 received, uint256 claimed) = rewards.totals();
        assertLe(claimed, received, "claimed <= received");
        assertEq(address(rewards).balance, received - claimed, "rewards balance");
        uint256 owed = rewards.unallocatedFees();
        for (uint256 i = 0; i < 4; ++i) {
            owed += rewards.pendingRewards(handler.validatorAt(i));
        }
        uint256 balance = address(rewards).balance;
        assertGe(balance, owed, "balance covers pending + unallocated");
        assertLe(balance - owed, 4 * (rewards.currentEpoch() + 1), "dust only");
    }

    /// Disputes holds exactly what it owes (bonds, credits, unclaimed pools; dust stays owed).
    function invariant_disputesSolvent() public view {
        assertEq(address(disputes).balance, disputes.owed(), "disputes balance == owed");
    }

    /// No dispute slashes without a quorum of the validator stake at its challenge, and nodes lost exactly what the
    /// disputes record as slashed.
    function invariant_noSlashWithoutQuorum() public view {
        uint256 n = handler.disputeCount();
        uint256 slashed;
        for (uint256 i = 0; i < n; ++i) {
            uint256 id = handler.disputeIds(i);
            Disputes.Dispute memory d = disputes.getDispute(id);
            assertEq(d.votesNodeWrong + d.votesNodeRight, handler.ghostVotes(id), "votes weigh aged checkpointed stake");
            assertEq(d.totalStake, staking.totalValidatorStakeAt(d.snapshotBlock), "total at the snapshot");
            if (d.outcome == Disputes.Outcome.NodeSlashed) {
                assertGe(d.votesNodeWrong * 10_000, d.totalStake * QUORUM_BPS + 1, "slashed with a quorum");
            } else {
                assertEq(d.slashed, 0, "nothing slashed otherwise");
            }
            slashed += d.slashed;
        }
        assertEq(slashed, handler.ghostSlashed(), "nodes lost exactly the recorded slashes");
    }

    /// Printed with -vv after each run: evidence that the dispute and lock paths are exercised.
    function afterInvariant() public {
        emit log_named_uint("disputes opened", handler.disputeCount());
        emit log_named_uint("wei slashed", handler.ghostSlashed());
        emit log_named_uint("withdrawals refused under a dispute", handler.lockedWithdrawals());
        emit log_named_uint("redemptions", handler.redemptions());
    }
}
