// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

import {Fixture} from "./utils/Fixture.sol";
import {ValidatorRewards} from "../src/ValidatorRewards.sol";
import {IStaking} from "../src/interfaces/IStaking.sol";

contract ValidatorRewardsTest is Fixture {
    function setUp() public {
        deploySystem();
        registerValidator(validator, 2 ether);
        registerValidator(validator2, 6 ether);
    }

    function test_depositFees_creditsCurrentEpoch() public {
        vm.roll(block.number + EPOCH_LENGTH * 3);
        vm.expectEmit();
        emit ValidatorRewards.FeesReceived(3, address(this), 1 ether);
        rewards.depositFees{value: 1 ether}();
        (uint256 fees,,) = rewards.epochInfo(3);
        assertEq(fees, 1 ether, "fees in epoch 3");
    }

    function test_attestAndClaim_shareProRataToStake() public {
        rewards.depositFees{value: 4 ether}();
        vm.expectEmit();
        emit ValidatorRewards.Attested(0, validator, 10, bytes32("root"), 2 ether);
        vm.prank(validator);
        rewards.attest(0, 10, bytes32("root"));
        vm.prank(validator2);
        rewards.attest(0, 7, bytes32("root2"));
        // Not claimable while the epoch runs.
        assertEq(rewards.pendingRewards(validator), 0, "pending during epoch");
        vm.expectRevert(abi.encodeWithSelector(ValidatorRewards.RewardsNothingToClaim.selector, validator));
        vm.prank(validator);
        rewards.claim();
        vm.roll(block.number + EPOCH_LENGTH);
        assertEq(rewards.pendingRewards(validator), 1 ether, "2/8 of 4");
        assertEq(rewards.pendingRewards(validator2), 3 ether, "6/8 of 4");
        uint256 before = validator.balance;
        vm.prank(validator);
        assertEq(rewards.claim(), 1 ether, "claimed");
        assertEq(validator.balance - before, 1 ether, "paid");
        assertEq(rewards.totalEarned(validator), 1 ether, "earned");
        vm.expectRevert(abi.encodeWithSelector(ValidatorRewards.RewardsNothingToClaim.selector, validator));
        vm.prank(validator);
        rewards.claim();
    }

    function test_attest_revertsForWrongEpochStrangersAndTwice() public {
        vm.expectRevert(abi.encodeWithSelector(ValidatorRewards.RewardsWrongEpoch.selector, 1, 0));
        vm.prank(validator);
        rewards.attest(1, 0, 0);
        vm.expectRevert(abi.encodeWithSelector(ValidatorRewards.RewardsNotValidator.selector, payer));
        vm.prank(payer);
        rewards.attest(0, 0, 0);
        vm.prank(validator);
        rewards.attest(0, 0, 0);
        vm.expectRevert(abi.encodeWithSelector(ValidatorRewards.RewardsAlreadyAttested.selector, 0, validator));
        vm.prank(validator);
        rewards.attest(0, 0, 0);
    }

    function test_rollOver_movesUnattestedFees() public {
        rewards.depositFees{value: 1 ether}();
        vm.expectRevert(abi.encodeWithSelector(ValidatorRewards.RewardsCannotRollOver.selector, 0));
        rewards.rollOver(0);
        vm.roll(block.number + EPOCH_LENGTH);
        vm.expectEmit();
        emit ValidatorRewards.FeesRolledOver(0, 1, 1 ether);
        rewards.rollOver(0);
        (uint256 fees,,) = rewards.epochInfo(1);
        assertEq(fees, 1 ether, "moved");
        vm.expectRevert(abi.encodeWithSelector(ValidatorRewards.RewardsCannotRollOver.selector, 0));
        rewards.rollOver(0);
    }

    function test_constructor_revertsOnZeroEpoch() public {
        vm.expectRevert(ValidatorRewards.RewardsInvalidParams.selector);
        new ValidatorRewards(IStaking(address(staking)), 0);
    }

    function testFuzz_claimsNeverExceedFees(uint256[4] memory fees, uint256 stakeSeed) public {
        uint256 extra = bound(stakeSeed, 0, 100 ether);
        vm.prank(validator);
        staking.increaseStake{value: extra + 1}();
        uint256 total;
        for (uint256 e = 0; e < fees.length; ++e) {
            uint256 f = bound(fees[e], 0, 50 ether);
            total += f;
            rewards.depositFees{value: f}();
            vm.prank(validator);
            rewards.attest(e, 1, 0);
            vm.prank(validator2);
            rewards.attest(e, 1, 0);
            vm.roll(block.number + EPOCH_LENGTH);
        }
        vm.prank(validator);
        uint256 a = rewards.claim();
        vm.prank(validator2);
        uint256 b = rewards.claim();
        assertLe(a + b, total, "claims <= fees");
        assertLe(total - (a + b), 2 * fees.length, "dust is at most (attesters - 1) wei per epoch");
        (uint256 received, uint256 claimed) = rewards.totals();
        assertEq(received, total, "received");
        assertEq(claimed, a + b, "claimed");
    }
}
