// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

import {Fixture} from "../utils/Fixture.sol";
import {Handler} from "./Handler.sol";
import {PaymentChannels} from "../../src/PaymentChannels.sol";

/// @notice System invariants under random sequences of every action (forge: 256 runs x depth 64 by default).
contract InvariantsTest is Fixture {
    Handler internal handler;

    function setUp() public {
        deploySystem();
        handler = new Handler(staking, channels, rewards, disputes);
        // The handler's nodes are registered; validators register through the handler.
        for (uint256 i = 0; i < 2; ++i) {
            address n = handler.nodeAt(i);
            vm.deal(n, 100 ether);
            vm.prank(n);
            staking.registerNode{value: 10 ether}(abi.encodePacked("peer", i), "ipfs://n");
        }
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

    /// Staking holds exactly active + unbonding stake; the validator set total matches member stakes.
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
    }

    /// Rewards claimed never exceed fees received, and the contract holds the rest.
    function invariant_rewardsNeverOverpay() public view {
        (uint256 received, uint256 claimed) = rewards.totals();
        assertLe(claimed, received, "claimed <= received");
        assertEq(address(rewards).balance, received - claimed, "rewards balance");
    }

    /// Disputes can always pay what it owes.
    function invariant_disputesSolvent() public view {
        assertGe(address(disputes).balance, disputes.owed(), "disputes balance >= owed");
    }
}
