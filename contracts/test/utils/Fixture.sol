// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

import {Test} from "./Test.sol";
import {Staking} from "../../src/Staking.sol";
import {PaymentChannels} from "../../src/PaymentChannels.sol";
import {ValidatorRewards} from "../../src/ValidatorRewards.sol";
import {Disputes} from "../../src/Disputes.sol";
import {IStaking} from "../../src/interfaces/IStaking.sol";
import {IValidatorRewards} from "../../src/interfaces/IValidatorRewards.sol";

/// @notice Deploys and wires the four contracts the way script/Deploy.s.sol does, with signing helpers.
abstract contract Fixture is Test {
    uint256 internal constant MIN_NODE_STAKE = 1 ether;
    uint256 internal constant MIN_VALIDATOR_STAKE = 2 ether;
    uint256 internal constant UNBONDING_DELAY = 7 days;
    uint256 internal constant EPOCH_LENGTH = 100;
    uint256 internal constant FEE_BPS = 500; // 5%
    uint256 internal constant CHALLENGE_WINDOW = 1 days;
    uint256 internal constant MIN_BOND = 0.1 ether;
    uint256 internal constant VOTING_PERIOD = 3 days;
    uint256 internal constant SLASH_BPS = 5000; // 50%
    uint256 internal constant CHALLENGER_BPS = 5000; // half of the slash

    Staking internal staking;
    ValidatorRewards internal rewards;
    PaymentChannels internal channels;
    Disputes internal disputes;

    uint256 internal constant PAYER_KEY = 0xA11CE;
    uint256 internal constant NODE_KEY = 0xB0B;
    uint256 internal constant OTHER_NODE_KEY = 0xB0B2;
    uint256 internal constant VALIDATOR_KEY = 0xC0FFEE;
    uint256 internal constant VALIDATOR2_KEY = 0xC0FFEE2;
    uint256 internal constant VALIDATOR3_KEY = 0xC0FFEE3;
    address internal payer;
    address internal node;
    address internal otherNode;
    address internal validator;
    address internal validator2;
    address internal validator3;

    function deploySystem() internal {
        staking = new Staking(MIN_NODE_STAKE, MIN_VALIDATOR_STAKE, UNBONDING_DELAY);
        rewards = new ValidatorRewards(IStaking(address(staking)), EPOCH_LENGTH);
        channels = new PaymentChannels(IValidatorRewards(address(rewards)), FEE_BPS, CHALLENGE_WINDOW);
        disputes = new Disputes(
            IStaking(address(staking)), address(channels), MIN_BOND, VOTING_PERIOD, SLASH_BPS, CHALLENGER_BPS
        );
        staking.setDisputes(address(disputes));

        payer = vm.addr(PAYER_KEY);
        node = vm.addr(NODE_KEY);
        otherNode = vm.addr(OTHER_NODE_KEY);
        validator = vm.addr(VALIDATOR_KEY);
        validator2 = vm.addr(VALIDATOR2_KEY);
        validator3 = vm.addr(VALIDATOR3_KEY);
        vm.label(payer, "payer");
        vm.label(node, "node");
        vm.label(validator, "validator");
        for (uint256 i = 0; i < 6; ++i) {
            vm.deal([payer, node, otherNode, validator, validator2, validator3][i], 1000 ether);
        }
        vm.warp(1_700_000_000);
    }

    function signVoucher(uint256 key, bytes32 channelId, uint256 cumulative) internal view returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, channels.voucherDigest(channelId, cumulative));
        return abi.encodePacked(r, s, v);
    }

    function openChannel(uint256 deposit) internal returns (bytes32 id) {
        vm.prank(payer);
        id = channels.open{value: deposit}(node, uint64(block.timestamp + 30 days));
    }

    function registerNode(address who) internal {
        vm.prank(who);
        staking.registerNode{value: 10 ether}(bytes("12D3KooWnode"), "ipfs://node");
    }

    function registerValidator(address who, uint256 stake) internal {
        vm.prank(who);
        staking.registerValidator{value: stake}();
    }

    function receipt(bytes32 jobId, bytes32 outputHash) internal view returns (Disputes.Receipt memory) {
        return Disputes.Receipt({
            jobId: jobId,
            modelId: keccak256("model"),
            inputHash: keccak256("input"),
            outputHash: outputHash,
            price: 1e13,
            node: node
        });
    }

    function signReceipt(uint256 key, Disputes.Receipt memory r) internal view returns (bytes memory) {
        (uint8 v, bytes32 rr, bytes32 s) = vm.sign(key, disputes.receiptDigest(r));
        return abi.encodePacked(rr, s, v);
    }
}
