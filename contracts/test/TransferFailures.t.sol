// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

import {Fixture} from "./utils/Fixture.sol";
import {PaymentChannels} from "../src/PaymentChannels.sol";
import {Staking} from "../src/Staking.sol";
import {ValidatorRewards} from "../src/ValidatorRewards.sol";
import {Disputes} from "../src/Disputes.sol";

/// @dev A participant (payee, validator, challenger) whose address refuses ETH.
contract Rejecter {
    /// Call `target` with `value`, bubbling up any revert unchanged.
    function exec(address target, uint256 value, bytes calldata data) external returns (bytes memory out) {
        bool ok;
        (ok, out) = target.call{value: value}(data);
        if (!ok) {
            assembly {
                revert(add(out, 32), mload(out))
            }
        }
    }

    receive() external payable {
        revert("no ETH accepted");
    }
}

/// @notice Every contract reports a recipient that refuses ETH with its typed error and keeps its books intact.
contract TransferFailuresTest is Fixture {
    Rejecter internal rejecter;

    function setUp() public {
        deploySystem();
        rejecter = new Rejecter();
        vm.deal(address(rejecter), 100 ether);
    }

    function test_redeemToARejectingPayee() public {
        vm.prank(payer);
        bytes32 id = channels.open{value: 1 ether}(address(rejecter), uint64(block.timestamp + 1 days));
        bytes memory sig = signVoucher(PAYER_KEY, id, 1 ether);
        vm.expectRevert(
            abi.encodeWithSelector(PaymentChannels.ChannelTransferFailed.selector, address(rejecter), 0.95 ether)
        );
        channels.redeem(id, 1 ether, sig);
        assertEq(channels.getChannel(id).redeemed, 0, "nothing redeemed");
    }

    function test_stakingWithdrawToARejecter() public {
        rejecter.exec(address(staking), 2 ether, abi.encodeCall(Staking.registerValidator, ()));
        rejecter.exec(address(staking), 0, abi.encodeCall(Staking.requestUnbond, (1 ether)));
        vm.warp(block.timestamp + UNBONDING_DELAY);
        vm.expectRevert(abi.encodeWithSelector(Staking.StakingTransferFailed.selector, address(rejecter), 1 ether));
        rejecter.exec(address(staking), 0, abi.encodeCall(Staking.withdraw, ()));
        (uint256 unbonding,) = staking.unbondingOf(address(rejecter));
        assertEq(unbonding, 1 ether, "still unbonding");
    }

    function test_rewardsClaimToARejecter() public {
        rejecter.exec(address(staking), 2 ether, abi.encodeCall(Staking.registerValidator, ()));
        vm.roll(rewards.epochStartBlock(2));
        rewards.depositFees{value: 1 ether}();
        rejecter.exec(address(rewards), 0, abi.encodeCall(ValidatorRewards.attest, (2, 1, bytes32(0))));
        vm.roll(rewards.epochStartBlock(3));
        vm.expectRevert(
            abi.encodeWithSelector(ValidatorRewards.RewardsTransferFailed.selector, address(rejecter), 1 ether)
        );
        rejecter.exec(address(rewards), 0, abi.encodeCall(ValidatorRewards.claim, (10)));
        assertEq(rewards.pendingRewards(address(rejecter)), 1 ether, "still claimable");
    }

    function test_disputeWithdrawToARejecter() public {
        registerNode(node);
        rejecter.exec(address(staking), 5 ether, abi.encodeCall(Staking.registerValidator, ()));
        registerValidator(validator, 2 ether);
        ageStake();
        Disputes.Evidence memory ev = evidenceOf(NODE_KEY, receipt(bytes32("job"), keccak256("node out")));
        bytes32 out = keccak256("our out");
        bytes32 leaf = disputes.receiptLeaf(ev.receipt);
        rejecter.exec(
            address(disputes),
            0,
            abi.encodeCall(Disputes.commit, (disputes.commitmentOf(address(rejecter), node, leaf, out, bytes32(0))))
        );
        nextBlock();
        rejecter.exec(address(disputes), 0.5 ether, abi.encodeCall(Disputes.challenge, (ev, out, bytes32(0))));
        vm.warp(block.timestamp + VOTING_PERIOD);
        disputes.resolve(0);
        uint256 credit = disputes.creditOf(address(rejecter));
        assertEq(credit, 0.5 ether + 1 ether, "bond back plus 20% of the 5 ether slash");
        vm.expectRevert(abi.encodeWithSelector(Disputes.DisputeTransferFailed.selector, address(rejecter), credit));
        rejecter.exec(address(disputes), 0, abi.encodeCall(Disputes.withdraw, ()));
        assertEq(disputes.creditOf(address(rejecter)), credit, "still credited");
    }
}
