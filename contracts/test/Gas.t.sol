// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

import {Fixture} from "./utils/Fixture.sol";
import {PaymentChannels} from "../src/PaymentChannels.sol";
import {Disputes} from "../src/Disputes.sol";

/// @notice Gas of each operation, written to snapshots/ by `vm.snapshotGasLastCall` and printed with -vv.
///         Execution gas of the call only: a transaction adds 21,000 plus calldata.
contract GasTest is Fixture {
    function setUp() public {
        deploySystem();
    }

    function _record(string memory name) internal returns (uint256 gas) {
        gas = vm.snapshotGasLastCall("PaymentChannels", name);
        emit log_named_uint(name, gas);
    }

    function test_gas_openAndRedeem() public {
        vm.prank(payer);
        bytes32 id = channels.open{value: 10 ether}(node, uint64(block.timestamp + 30 days));
        _record("open");
        bytes memory sig1 = signVoucher(PAYER_KEY, id, 1 ether);
        channels.redeem(id, 1 ether, sig1);
        _record("redeem (first)");
        bytes memory sig2 = signVoucher(PAYER_KEY, id, 2 ether);
        channels.redeem(id, 2 ether, sig2);
        _record("redeem (subsequent)");
    }

    function _batch(uint256 n) internal returns (PaymentChannels.SignedVoucher[] memory vs) {
        vs = new PaymentChannels.SignedVoucher[](n);
        for (uint256 i = 0; i < n; ++i) {
            bytes32 id = openChannel(1 ether);
            // Each channel first settled once, as a node does continuously: later batches are the common case.
            channels.redeem(id, 0.1 ether, signVoucher(PAYER_KEY, id, 0.1 ether));
            vs[i] = batchVoucher(PAYER_KEY, id, 0.2 ether);
        }
    }

    function _redeemMany(uint256 n) internal {
        PaymentChannels.SignedVoucher[] memory vs = _batch(n);
        channels.redeemMany(vs);
        uint256 gas = _record(string.concat("redeemMany x", vm.toString(n)));
        emit log_named_uint(string.concat("redeemMany x", vm.toString(n), " per channel"), gas / n);
        vm.snapshotValue("PaymentChannels", string.concat("redeemMany x", vm.toString(n), " per channel"), gas / n);
    }

    function test_gas_redeemMany1() public {
        _redeemMany(1);
    }

    function test_gas_redeemMany10() public {
        _redeemMany(10);
    }

    function test_gas_redeemMany100() public {
        _redeemMany(100);
    }

    function _snap(string memory group, string memory name) internal returns (uint256 gas) {
        gas = vm.snapshotGasLastCall(group, name);
        emit log_named_uint(name, gas);
    }

    function _disputeSetup() internal returns (Disputes.Evidence memory ev, bytes32 salt) {
        registerNode(node);
        registerValidator(validator, 2 ether);
        registerValidator(validator2, 3 ether);
        registerValidator(validator3, 4 ether);
        ageStake();
        Disputes.Receipt[] memory rs = new Disputes.Receipt[](64);
        for (uint256 i = 0; i < 64; ++i) {
            rs[i] = receipt(bytes32(i), keccak256(abi.encode("out", i)));
        }
        ev = evidenceInBatch(NODE_KEY, rs, 21);
        salt = bytes32("salt");
        bytes32 commitment = disputes.commitmentOf(validator, node, disputes.receiptLeaf(ev.receipt), "ours", salt);
        vm.prank(validator);
        disputes.commit(commitment);
        _snap("Disputes", "commit");
        nextBlock();
    }

    function test_gas_disputeSlash() public {
        (Disputes.Evidence memory ev, bytes32 salt) = _disputeSetup();
        vm.prank(validator);
        uint256 id = disputes.challenge{value: 0.5 ether}(ev, "ours", salt);
        _snap("Disputes", "challenge (reveal, 64-leaf batch proof)");
        vm.prank(validator2);
        disputes.vote(id, true);
        _snap("Disputes", "vote");
        vm.warp(block.timestamp + VOTING_PERIOD);
        disputes.resolve(id);
        _snap("Disputes", "resolve (slash)");
        vm.prank(validator2);
        disputes.claimVoteReward(id);
        _snap("Disputes", "claimVoteReward");
        vm.prank(validator);
        disputes.withdraw();
        _snap("Disputes", "withdraw");
    }

    function test_gas_disputeChallengerLost() public {
        (Disputes.Evidence memory ev, bytes32 salt) = _disputeSetup();
        vm.prank(validator);
        uint256 id = disputes.challenge{value: 0.5 ether}(ev, "ours", salt);
        vm.prank(validator3);
        disputes.vote(id, false);
        vm.warp(block.timestamp + VOTING_PERIOD);
        disputes.resolve(id);
        _snap("Disputes", "resolve (challenger lost)");
    }

    function test_gas_rewards() public {
        registerValidator(validator, 2 ether);
        registerValidator(validator2, 3 ether);
        vm.roll(rewards.epochStartBlock(2));
        rewards.depositFees{value: 1 ether}();
        _snap("ValidatorRewards", "depositFees");
        vm.prank(validator);
        rewards.attest(2, 120, bytes32("root"));
        _snap("ValidatorRewards", "attest");
        vm.roll(rewards.epochStartBlock(3));
        vm.prank(validator);
        rewards.claim(1);
        _snap("ValidatorRewards", "claim (1 epoch)");
        for (uint256 e = 3; e < 103; ++e) {
            rewards.depositFees{value: 1 ether}();
            vm.prank(validator2);
            rewards.attest(e, 1, bytes32("root"));
            vm.roll(rewards.epochStartBlock(e + 1));
        }
        vm.prank(validator2);
        rewards.claim(100);
        _snap("ValidatorRewards", "claim (100 epochs)");
        vm.prank(validator2);
        staking.requestUnbond(1 ether);
        _snap("Staking", "requestUnbond (validator)");
        vm.warp(block.timestamp + UNBONDING_DELAY);
        vm.prank(validator2);
        staking.withdraw();
        _snap("Staking", "withdraw");
    }
}
