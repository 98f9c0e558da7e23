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
        // Stake must be bonded through a whole epoch before it earns: these (from epoch 0) earn from epoch 2 on.
        vm.roll(rewards.epochStartBlock(2));
    }

    function _attest(address who, uint256 epoch) internal {
        vm.prank(who);
        rewards.attest(epoch, 10, bytes32("root"));
    }

    function _endEpoch() internal {
        vm.roll(rewards.epochStartBlock(rewards.currentEpoch() + 1));
    }

    function test_depositFees_waitForTheNextAttestedEpoch() public {
        vm.expectEmit();
        emit ValidatorRewards.FeesReceived(2, address(this), 1 ether);
        rewards.depositFees{value: 1 ether}();
        assertEq(rewards.unallocatedFees(), 1 ether, "unallocated");
        (uint256 pot,) = rewards.epochInfo(2);
        assertEq(pot, 0, "no pot while the epoch runs");
    }

    function test_attestAndClaim_shareProRataToStakeAtEpochStart() public {
        rewards.depositFees{value: 4 ether}();
        vm.expectEmit();
        emit ValidatorRewards.Attested(2, validator, 10, bytes32("root"), 2 ether);
        _attest(validator, 2);
        _attest(validator2, 2);
        // Not claimable while the epoch runs.
        assertEq(rewards.pendingRewards(validator), 0, "pending during epoch");
        vm.expectRevert(abi.encodeWithSelector(ValidatorRewards.RewardsNothingToClaim.selector, validator));
        vm.prank(validator);
        rewards.claim(10);
        _endEpoch();
        assertEq(rewards.pendingRewards(validator), 1 ether, "2/8 of 4");
        assertEq(rewards.pendingRewards(validator2), 3 ether, "6/8 of 4");
        uint256 before = validator.balance;
        vm.prank(validator);
        assertEq(rewards.claim(10), 1 ether, "claimed");
        assertEq(validator.balance - before, 1 ether, "paid");
        assertEq(rewards.totalEarned(validator), 1 ether, "earned");
        vm.expectRevert(abi.encodeWithSelector(ValidatorRewards.RewardsNothingToClaim.selector, validator));
        vm.prank(validator);
        rewards.claim(10);
        vm.expectRevert(abi.encodeWithSelector(ValidatorRewards.RewardsNothingToClaim.selector, validator2));
        vm.prank(validator2);
        rewards.claim(0);
    }

    function test_attest_revertsForWrongEpochStrangersAndTwice() public {
        vm.expectRevert(abi.encodeWithSelector(ValidatorRewards.RewardsWrongEpoch.selector, 3, 2));
        vm.prank(validator);
        rewards.attest(3, 0, 0);
        vm.expectRevert(abi.encodeWithSelector(ValidatorRewards.RewardsNotValidator.selector, payer));
        vm.prank(payer);
        rewards.attest(2, 0, 0);
        _attest(validator, 2);
        vm.expectRevert(abi.encodeWithSelector(ValidatorRewards.RewardsAlreadyAttested.selector, 2, validator));
        vm.prank(validator);
        rewards.attest(2, 0, 0);
    }

    function test_stakeReduced_onlyStaking() public {
        vm.expectRevert(abi.encodeWithSelector(ValidatorRewards.RewardsOnlyStaking.selector, address(this)));
        rewards.stakeReduced(validator);
    }

    function test_constructor_revertsOnZeroEpoch() public {
        vm.expectRevert(ValidatorRewards.RewardsInvalidParams.selector);
        new ValidatorRewards(IStaking(address(staking)), 0);
    }

    /// Last-block stake: stake added in the last block of an epoch has no weight in it nor in the next (it must be
    /// bonded through a whole epoch); stake that qualified and is unbonded in the epoch (after attesting, in the same
    /// block) earns nothing.
    function test_attack_lastBlockStake() public {
        address attacker = vm.addr(0xBAD);
        vm.deal(attacker, 1000 ether);
        rewards.depositFees{value: 10 ether}();
        _attest(validator, 2);
        // Last block of epoch 2: stake, attest.
        vm.roll(rewards.epochStartBlock(3) - 1);
        vm.prank(attacker);
        staking.registerValidator{value: 500 ether}();
        vm.expectRevert(abi.encodeWithSelector(ValidatorRewards.RewardsNoStakeAtEpochStart.selector, 2, attacker));
        vm.prank(attacker);
        rewards.attest(2, 1000, bytes32("x"));
        // First block of epoch 3: bonded at its start, but not through epoch 2.
        _endEpoch();
        rewards.depositFees{value: 10 ether}();
        _attest(validator, 3);
        vm.expectRevert(abi.encodeWithSelector(ValidatorRewards.RewardsNoStakeAtEpochStart.selector, 3, attacker));
        vm.prank(attacker);
        rewards.attest(3, 1000, bytes32("x"));
        // Epoch 4: it qualifies, attests... and unbonds in the same block.
        _endEpoch();
        rewards.depositFees{value: 10 ether}();
        _attest(validator, 4);
        _attest(attacker, 4);
        assertEq(rewards.weightOf(attacker, 4), 500 ether, "weight at the epoch's start");
        vm.prank(attacker);
        staking.requestUnbond(500 ether);
        assertEq(rewards.weightOf(attacker, 4), 0, "unbonding stake earns nothing");
        _endEpoch();
        assertEq(rewards.pendingRewards(attacker), 0, "attacker earned nothing");
        assertEq(rewards.pendingRewards(validator), 30 ether, "the honest validator earned all three epochs");
    }

    /// Partial unbonding cuts the weight to what is left; slashing does too.
    function test_weightFollowsStakeDown() public {
        _attest(validator2, 2);
        _attest(validator, 2);
        vm.prank(validator2);
        staking.requestUnbond(2 ether);
        assertEq(rewards.weightOf(validator2, 2), 4 ether, "6 - 2");
        (, uint256 total) = rewards.epochInfo(2);
        assertEq(total, 6 ether, "4 + 2");
        rewards.depositFees{value: 6 ether}();
        _endEpoch();
        assertEq(rewards.pendingRewards(validator2), 4 ether, "4/6 of 6");
        assertEq(rewards.pendingRewards(validator), 2 ether, "2/6 of 6");
        // Stake added during an epoch does not raise the weight in it.
        _attest(validator, 3);
        vm.prank(validator);
        staking.increaseStake{value: 100 ether}();
        assertEq(rewards.weightOf(validator, 3), 2 ether, "still the stake at the epoch's start");
    }

    /// Unbounded claim: 1,000 attested epochs are claimed in bounded calls, all of it, each call well inside a block.
    function test_attack_unboundedClaim() public {
        uint256 epochs = 1000;
        for (uint256 i = 0; i < epochs; ++i) {
            rewards.depositFees{value: 1 ether}();
            _attest(validator, rewards.currentEpoch());
            _endEpoch();
        }
        assertEq(rewards.unclaimedEpochs(validator), epochs, "1000 epochs to claim");
        uint256 total;
        uint256 maxGas;
        for (uint256 i = 0; i < epochs / 100; ++i) {
            uint256 gasBefore = gasleft();
            vm.prank(validator);
            total += rewards.claim(100);
            uint256 used = gasBefore - gasleft();
            if (used > maxGas) maxGas = used;
        }
        assertEq(total, epochs * 1 ether, "everything claimed");
        assertLt(maxGas, 5_000_000, "a 100-epoch claim fits easily in a block");
        emit log_named_uint("claim(100) gas, at most", maxGas);
        assertEq(rewards.unclaimedEpochs(validator), 0, "nothing left");
    }

    /// Stuck fees: fees of epochs nobody attested roll forward by themselves to the next attested epoch.
    function test_attack_stuckFeesRollForward() public {
        for (uint256 i = 0; i < 5; ++i) {
            rewards.depositFees{value: 1 ether}();
            _endEpoch();
        }
        uint256 e = rewards.currentEpoch();
        rewards.depositFees{value: 1 ether}();
        _attest(validator, e);
        assertEq(rewards.unallocatedFees(), 6 ether, "all six wait for this epoch");
        _endEpoch();
        rewards.depositFees{value: 7 ether}(); // the next epoch's fee does not join the finished pot
        (uint256 pot,) = rewards.epochInfo(e);
        assertEq(pot, 6 ether, "one pot with the five unattested epochs' fees");
        assertEq(rewards.unallocatedFees(), 7 ether, "the new fee waits");
        vm.prank(validator);
        assertEq(rewards.claim(1), 6 ether, "claimed without any roll-over transaction");
    }

    /// An epoch whose every attester unbonded has no weight: its fees roll forward instead of being stranded.
    function test_feesOfAnEpochWhoseAttestersAllUnbondedRollForward() public {
        rewards.depositFees{value: 3 ether}();
        _attest(validator, 2);
        vm.prank(validator);
        staking.requestUnbond(2 ether);
        _endEpoch();
        _attest(validator2, 3);
        _endEpoch();
        vm.prank(validator2);
        assertEq(rewards.claim(5), 3 ether, "epoch 1's fees reached epoch 2's attester");
        assertEq(rewards.pendingRewards(validator), 0, "the unbonded validator got nothing");
    }

    function testFuzz_claimsNeverExceedFees(uint256[4] memory fees, uint256 stakeSeed) public {
        uint256 extra = bound(stakeSeed, 0, 100 ether);
        vm.prank(validator);
        staking.increaseStake{value: extra + 1}();
        _endEpoch();
        uint256 total;
        for (uint256 i = 0; i < fees.length; ++i) {
            uint256 f = bound(fees[i], 0, 50 ether);
            total += f;
            rewards.depositFees{value: f}();
            _attest(validator, rewards.currentEpoch());
            _attest(validator2, rewards.currentEpoch());
            _endEpoch();
        }
        vm.prank(validator);
        uint256 a = rewards.claim(10);
        vm.prank(validator2);
        uint256 b = rewards.claim(10);
        assertLe(a + b, total, "claims <= fees");
        assertLe(total - (a + b), 2 * fees.length, "dust is at most (attesters - 1) wei per epoch");
        (uint256 received, uint256 claimed) = rewards.totals();
        assertEq(received, total, "received");
        assertEq(claimed, a + b, "claimed");
    }
}
