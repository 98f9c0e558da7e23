// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

import {Fixture} from "./utils/Fixture.sol";
import {Staking} from "../src/Staking.sol";
import {IStaking} from "../src/interfaces/IStaking.sol";

contract StakingTest is Fixture {
    function setUp() public {
        deploySystem();
    }

    function test_registerNode_storesOperatorPeerIdAndStake() public {
        vm.expectEmit();
        emit Staking.NodeRegistered(node, bytes("12D3KooWnode"), "ipfs://node", 10 ether);
        registerNode(node);
        assertTrue(staking.roleOf(node) == IStaking.Role.Node, "role");
        assertEq(staking.stakeOf(node), 10 ether, "stake");
        (bytes memory peerId, string memory uri) = staking.nodeInfo(node);
        assertEq(keccak256(peerId), keccak256("12D3KooWnode"), "peer id");
        assertEq(keccak256(bytes(uri)), keccak256("ipfs://node"), "uri");
        assertTrue(!staking.isActiveValidator(node), "a node is not a validator");
    }

    function test_register_revertsBelowMinimumTwiceAndEmptyPeerId() public {
        vm.expectRevert(abi.encodeWithSelector(Staking.StakingBelowMinimum.selector, 0.5 ether, MIN_NODE_STAKE));
        vm.prank(node);
        staking.registerNode{value: 0.5 ether}(bytes("p"), "");
        vm.expectRevert(Staking.StakingEmptyPeerId.selector);
        vm.prank(node);
        staking.registerNode{value: 1 ether}(bytes(""), "");
        registerNode(node);
        vm.expectRevert(abi.encodeWithSelector(Staking.StakingAlreadyRegistered.selector, node));
        vm.prank(node);
        staking.registerValidator{value: 5 ether}();
        vm.expectRevert(abi.encodeWithSelector(Staking.StakingBelowMinimum.selector, 1 ether, MIN_VALIDATOR_STAKE));
        vm.prank(validator);
        staking.registerValidator{value: 1 ether}();
    }

    function test_validatorSet_tracksStakeChanges() public {
        registerValidator(validator, 2 ether);
        registerValidator(validator2, 3 ether);
        (address[] memory set, uint256 total) = staking.activeValidators();
        assertEq(set.length, 2, "two active");
        assertEq(total, 5 ether, "total");
        vm.prank(validator);
        staking.increaseStake{value: 1 ether}();
        (, total) = staking.activeValidators();
        assertEq(total, 6 ether, "after increase");
        // Unbonding below the minimum drops the validator from the active set.
        vm.prank(validator2);
        staking.requestUnbond(2 ether);
        (set, total) = staking.activeValidators();
        assertEq(set.length, 1, "one active");
        assertEq(set[0], validator, "the remaining one");
        assertEq(total, 3 ether, "total after unbond");
        assertTrue(!staking.isActiveValidator(validator2), "inactive");
    }

    function test_increaseStake_revertsForStrangersAndZero() public {
        vm.expectRevert(abi.encodeWithSelector(Staking.StakingNotRegistered.selector, payer));
        vm.prank(payer);
        staking.increaseStake{value: 1}();
        registerNode(node);
        vm.expectRevert(Staking.StakingZeroAmount.selector);
        vm.prank(node);
        staking.increaseStake{value: 0}();
    }

    function test_unbondAndWithdraw_afterDelay() public {
        registerNode(node);
        vm.expectEmit();
        emit Staking.UnbondRequested(node, 4 ether, block.timestamp + UNBONDING_DELAY);
        vm.prank(node);
        staking.requestUnbond(4 ether);
        assertEq(staking.stakeOf(node), 6 ether, "stake");
        vm.expectRevert(
            abi.encodeWithSelector(Staking.StakingNothingToWithdraw.selector, block.timestamp + UNBONDING_DELAY)
        );
        vm.prank(node);
        staking.withdraw();
        vm.warp(block.timestamp + UNBONDING_DELAY);
        uint256 before = node.balance;
        vm.prank(node);
        staking.withdraw();
        assertEq(node.balance - before, 4 ether, "withdrawn");
        vm.expectRevert(abi.encodeWithSelector(Staking.StakingNothingToWithdraw.selector, 0));
        vm.prank(node);
        staking.withdraw();
    }

    function test_unbond_revertsOverStakeZeroAndStranger() public {
        registerNode(node);
        vm.expectRevert(abi.encodeWithSelector(Staking.StakingInsufficientStake.selector, 11 ether, 10 ether));
        vm.prank(node);
        staking.requestUnbond(11 ether);
        vm.expectRevert(Staking.StakingZeroAmount.selector);
        vm.prank(node);
        staking.requestUnbond(0);
        vm.expectRevert(abi.encodeWithSelector(Staking.StakingNotRegistered.selector, payer));
        vm.prank(payer);
        staking.requestUnbond(1);
    }

    function test_slash_onlyDisputes_andReachesUnbondingStake() public {
        registerNode(node);
        vm.expectRevert(abi.encodeWithSelector(Staking.StakingOnlyDisputes.selector, address(this)));
        staking.slash(node, 1 ether);
        vm.prank(node);
        staking.requestUnbond(8 ether);
        vm.prank(address(disputes));
        uint256 slashed = staking.slash(node, 5 ether);
        assertEq(slashed, 5 ether, "slashed");
        assertEq(staking.stakeOf(node), 0, "active stake taken first");
        (uint256 unbonding,) = staking.unbondingOf(node);
        assertEq(unbonding, 5 ether, "then unbonding");
        assertEq(address(disputes).balance, 5 ether, "sent to disputes");
        (uint256 bonded, uint256 unb) = staking.totals();
        assertEq(address(staking).balance, bonded + unb, "balance = totals");
    }

    function test_setModules_onlyOnceByTheDeployer() public {
        vm.expectRevert(Staking.StakingModulesAlreadySet.selector);
        staking.setModules(address(disputes), address(rewards));
        Staking fresh = new Staking(1, 1, 30 days);
        vm.expectRevert(Staking.StakingModulesAlreadySet.selector);
        vm.prank(payer);
        fresh.setModules(address(disputes), address(rewards));
        vm.expectRevert(Staking.StakingModulesAlreadySet.selector);
        fresh.setModules(address(disputes), address(0));
        fresh.setModules(address(disputes), address(rewards));
        assertEq(fresh.disputes(), address(disputes), "disputes");
        assertEq(fresh.rewards(), address(rewards), "rewards");
    }

    /// Votes and rewards read stake as it stood at a past block: checkpoints per validator and in total.
    function test_checkpoints_weighStakeAtPastBlocks() public {
        uint256 b0 = block.number;
        registerValidator(validator, 2 ether);
        registerValidator(validator2, 3 ether);
        nextBlock();
        uint256 b1 = block.number;
        vm.prank(validator);
        staking.increaseStake{value: 5 ether}();
        vm.prank(validator2);
        staking.requestUnbond(2 ether); // 1 ether left: under the minimum, so no weight
        nextBlock();
        assertEq(staking.validatorStakeAt(validator, b0 - 1), 0, "before registering");
        assertEq(staking.validatorStakeAt(validator, b0), 2 ether, "registered");
        assertEq(staking.totalValidatorStakeAt(b0), 5 ether, "total at b0");
        assertEq(staking.validatorStakeAt(validator, b1), 7 ether, "increased");
        assertEq(staking.validatorStakeAt(validator2, b1), 0, "under the minimum weighs nothing");
        assertEq(staking.totalValidatorStakeAt(b1), 7 ether, "total at b1");
        assertEq(staking.validatorStakeOf(validator2), 0, "now");
        vm.expectRevert(abi.encodeWithSelector(Staking.StakingFutureLookup.selector, block.number, block.number));
        staking.validatorStakeAt(validator, block.number);
        // Nodes have no validator weight.
        registerNode(node);
        nextBlock();
        assertEq(staking.validatorStakeAt(node, block.number - 1), 0, "nodes do not vote");
        assertEq(staking.bondedOf(validator2), 3 ether, "bonded = active + unbonding");
    }

    function testFuzz_stakeNeverNegativeAndBalanceMatches(uint256 stakeSeed, uint256 unbondSeed, uint256 slashSeed)
        public
    {
        uint256 stake = bound(stakeSeed, MIN_VALIDATOR_STAKE, 500 ether);
        registerValidator(validator, stake);
        uint256 unbond = bound(unbondSeed, 1, stake);
        vm.prank(validator);
        staking.requestUnbond(unbond);
        uint256 slashAmount = bound(slashSeed, 0, 2 * stake);
        vm.prank(address(disputes));
        uint256 slashed = staking.slash(validator, slashAmount);
        assertLe(slashed, stake, "never more than held");
        (uint256 unbonding,) = staking.unbondingOf(validator);
        assertEq(staking.stakeOf(validator) + unbonding + slashed, stake, "conservation");
        (uint256 bonded, uint256 unb) = staking.totals();
        assertEq(address(staking).balance, bonded + unb, "balance = totals");
    }
}
