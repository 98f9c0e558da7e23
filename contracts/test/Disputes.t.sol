// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

import {Fixture} from "./utils/Fixture.sol";
import {Disputes} from "../src/Disputes.sol";
import {IStaking} from "../src/interfaces/IStaking.sol";

contract DisputesTest is Fixture {
    bytes32 internal constant NODE_OUT = keccak256("node output");
    bytes32 internal constant OUR_OUT = keccak256("validator output");

    function setUp() public {
        deploySystem();
        registerNode(node);
        registerValidator(validator, 2 ether);
        registerValidator(validator2, 3 ether);
        registerValidator(validator3, 4 ether);
    }

    function _challenge() internal returns (uint256 id) {
        Disputes.Receipt memory r = receipt(bytes32("job-1"), NODE_OUT);
        bytes memory sig = signReceipt(NODE_KEY, r);
        vm.prank(validator);
        id = disputes.challenge{value: MIN_BOND}(r, sig, OUR_OUT);
    }

    function test_challenge_opensWithChallengerVote() public {
        Disputes.Receipt memory r = receipt(bytes32("job-1"), NODE_OUT);
        bytes memory sig = signReceipt(NODE_KEY, r);
        vm.expectEmit(true, true, true, false);
        emit Disputes.DisputeOpened(0, node, validator, 0, 0, 0, 0, 0, 0, 0);
        vm.prank(validator);
        uint256 id = disputes.challenge{value: MIN_BOND}(r, sig, OUR_OUT);
        Disputes.Dispute memory d = disputes.getDispute(id);
        assertEq(d.node, node, "node");
        assertEq(d.challenger, validator, "challenger");
        assertEq(d.bond, MIN_BOND, "bond");
        assertEq(d.votesNodeWrong, 2 ether, "challenger's stake counted");
        assertEq(d.receiptDigest, disputes.receiptDigest(r), "digest");
        assertEq(disputes.owed(), MIN_BOND, "owed");
    }

    function test_challenge_revertsOnEveryBadInput() public {
        Disputes.Receipt memory r = receipt(bytes32("job-1"), NODE_OUT);
        bytes memory sig = signReceipt(NODE_KEY, r);
        vm.expectRevert(abi.encodeWithSelector(Disputes.DisputeNotValidator.selector, payer));
        vm.prank(payer);
        disputes.challenge{value: MIN_BOND}(r, sig, OUR_OUT);
        vm.expectRevert(abi.encodeWithSelector(Disputes.DisputeBondTooSmall.selector, MIN_BOND - 1, MIN_BOND));
        vm.prank(validator);
        disputes.challenge{value: MIN_BOND - 1}(r, sig, OUR_OUT);
        // Receipt signed by someone other than the node it names.
        bytes memory forged = signReceipt(PAYER_KEY, r);
        vm.expectRevert(abi.encodeWithSelector(Disputes.DisputeInvalidReceiptSignature.selector, payer, node));
        vm.prank(validator);
        disputes.challenge{value: MIN_BOND}(r, forged, OUR_OUT);
        // Receipt of an address that is not a registered node.
        Disputes.Receipt memory r2 = receipt(bytes32("job-2"), NODE_OUT);
        r2.node = otherNode;
        bytes memory sig2 = signReceipt(OTHER_NODE_KEY, r2);
        vm.expectRevert(abi.encodeWithSelector(Disputes.DisputeNotANode.selector, otherNode));
        vm.prank(validator);
        disputes.challenge{value: MIN_BOND}(r2, sig2, OUR_OUT);
        vm.expectRevert(Disputes.DisputeSameOutput.selector);
        vm.prank(validator);
        disputes.challenge{value: MIN_BOND}(r, sig, NODE_OUT);
        vm.prank(validator);
        disputes.challenge{value: MIN_BOND}(r, sig, OUR_OUT);
        vm.expectRevert(abi.encodeWithSelector(Disputes.DisputeAlreadyExists.selector, disputes.receiptDigest(r), 0));
        vm.prank(validator2);
        disputes.challenge{value: MIN_BOND}(r, sig, OUR_OUT);
    }

    function test_vote_rules() public {
        uint256 id = _challenge();
        vm.expectEmit();
        emit Disputes.Voted(id, validator2, false, 3 ether);
        vm.prank(validator2);
        disputes.vote(id, false);
        vm.expectRevert(abi.encodeWithSelector(Disputes.DisputeAlreadyVoted.selector, id, validator2));
        vm.prank(validator2);
        disputes.vote(id, true);
        vm.expectRevert(abi.encodeWithSelector(Disputes.DisputeAlreadyVoted.selector, id, validator));
        vm.prank(validator);
        disputes.vote(id, true);
        vm.expectRevert(abi.encodeWithSelector(Disputes.DisputeNotValidator.selector, node));
        vm.prank(node);
        disputes.vote(id, false);
        vm.expectRevert(abi.encodeWithSelector(Disputes.DisputeNotFound.selector, 9));
        vm.prank(validator3);
        disputes.vote(9, true);
        vm.warp(block.timestamp + VOTING_PERIOD);
        vm.expectPartialRevert(Disputes.DisputeVotingClosed.selector);
        vm.prank(validator3);
        disputes.vote(id, true);
    }

    function test_resolve_slashesNodeAndPaysChallengerAndVoters() public {
        uint256 id = _challenge(); // validator: 2 ether against the node
        vm.prank(validator3);
        disputes.vote(id, true); // 4 ether against
        vm.prank(validator2);
        disputes.vote(id, false); // 3 ether for
        vm.expectPartialRevert(Disputes.DisputeVotingOpen.selector);
        disputes.resolve(id);
        vm.warp(block.timestamp + VOTING_PERIOD);
        vm.expectEmit();
        emit Disputes.DisputeResolved(id, Disputes.Outcome.NodeSlashed, 5 ether, 2.5 ether);
        disputes.resolve(id);
        assertEq(staking.stakeOf(node), 5 ether, "half the node's stake slashed");
        assertEq(disputes.creditOf(validator), MIN_BOND + 2.5 ether, "bond back + challenger share");
        vm.expectRevert(abi.encodeWithSelector(Disputes.DisputeAlreadyResolved.selector, id));
        disputes.resolve(id);

        uint256 before = validator3.balance;
        vm.prank(validator3);
        uint256 share = disputes.claimVoteReward(id);
        assertEq(share, uint256(2.5 ether) * 4 / 6, "pro rata among the winning side");
        assertEq(validator3.balance - before, share, "paid");
        vm.expectRevert(abi.encodeWithSelector(Disputes.DisputeNothingToClaim.selector, validator3));
        vm.prank(validator3);
        disputes.claimVoteReward(id);
        vm.expectRevert(abi.encodeWithSelector(Disputes.DisputeNothingToClaim.selector, validator2));
        vm.prank(validator2);
        disputes.claimVoteReward(id); // lost side

        before = validator.balance;
        vm.prank(validator);
        disputes.withdraw();
        assertEq(validator.balance - before, MIN_BOND + 2.5 ether, "challenger withdrew");
        vm.prank(validator);
        disputes.claimVoteReward(id);
        assertLe(disputes.owed(), address(disputes).balance, "owed covered");
        assertLe(address(disputes).balance - disputes.owed(), 1, "at most dust left unowed");
    }

    function test_resolve_challengerLosesBondToNodeSide() public {
        uint256 id = _challenge(); // 2 ether against
        vm.prank(validator2);
        disputes.vote(id, false); // 3 ether for the node
        vm.warp(block.timestamp + VOTING_PERIOD);
        disputes.resolve(id);
        assertEq(staking.stakeOf(node), 10 ether, "node not slashed");
        assertEq(disputes.creditOf(validator), 0, "bond forfeited");
        uint256 before = validator2.balance;
        vm.prank(validator2);
        disputes.claimVoteReward(id);
        assertEq(validator2.balance - before, MIN_BOND, "node side takes the bond");
        assertEq(address(disputes).balance, 0, "nothing left");
        vm.expectRevert(abi.encodeWithSelector(Disputes.DisputeNothingToClaim.selector, validator));
        vm.prank(validator);
        disputes.withdraw();
    }

    function test_receive_rejectsStrangers() public {
        vm.expectRevert(abi.encodeWithSelector(Disputes.DisputeUnexpectedPayment.selector, address(this)));
        (bool ok,) = address(disputes).call{value: 1}("");
        ok;
    }

    function test_constructor_rejectsBadParams() public {
        vm.expectRevert(Disputes.DisputeInvalidParams.selector);
        new Disputes(IStaking(address(0)), address(channels), 1, 1, 1, 1);
        vm.expectRevert(Disputes.DisputeInvalidParams.selector);
        new Disputes(IStaking(address(staking)), address(channels), 1, 1, 10_001, 1);
    }

    function testFuzz_receiptSignedByOtherKeyIsRejected(uint256 keySeed, bytes32 jobId) public {
        uint256 key = bound(keySeed, 1, 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364140);
        vm.assume(key != NODE_KEY);
        Disputes.Receipt memory r = receipt(jobId, NODE_OUT);
        bytes memory sig = signReceipt(key, r);
        vm.expectRevert(abi.encodeWithSelector(Disputes.DisputeInvalidReceiptSignature.selector, vm.addr(key), node));
        vm.prank(validator);
        disputes.challenge{value: MIN_BOND}(r, sig, OUR_OUT);
    }
}
