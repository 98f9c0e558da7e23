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
            vs[i] = PaymentChannels.SignedVoucher(id, 0.2 ether, signVoucher(PAYER_KEY, id, 0.2 ether));
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

    function test_gas_attestClaimChallengeResolve() public {
        registerNode(node);
        registerValidator(validator, 2 ether);
        registerValidator(validator2, 3 ether);
        rewards.depositFees{value: 1 ether}();
        vm.prank(validator);
        rewards.attest(0, 120, bytes32("root"));
        emit log_named_uint("attest", vm.snapshotGasLastCall("ValidatorRewards", "attest"));
        vm.roll(block.number + EPOCH_LENGTH);
        vm.prank(validator);
        rewards.claim();
        emit log_named_uint("claim (1 epoch)", vm.snapshotGasLastCall("ValidatorRewards", "claim (1 epoch)"));

        Disputes.Receipt memory r = receipt(bytes32("job"), keccak256("node out"));
        bytes memory sig = signReceipt(NODE_KEY, r);
        vm.prank(validator);
        uint256 id = disputes.challenge{value: MIN_BOND}(r, sig, keccak256("our out"));
        emit log_named_uint("challenge", vm.snapshotGasLastCall("Disputes", "challenge"));
        vm.prank(validator2);
        disputes.vote(id, true);
        emit log_named_uint("vote", vm.snapshotGasLastCall("Disputes", "vote"));
        vm.warp(block.timestamp + VOTING_PERIOD);
        disputes.resolve(id);
        emit log_named_uint("resolve (slash)", vm.snapshotGasLastCall("Disputes", "resolve (slash)"));
    }
}
