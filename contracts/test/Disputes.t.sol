// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

import {Fixture} from "./utils/Fixture.sol";
import {Disputes} from "../src/Disputes.sol";
import {Staking} from "../src/Staking.sol";
import {IStaking} from "../src/interfaces/IStaking.sol";

/// @notice Commit-reveal challenges, quorum votes, outcomes and the bad inputs of each call.
contract DisputesTest is Fixture {
    bytes32 internal constant NODE_OUT = keccak256("node output");
    bytes32 internal constant OUR_OUT = keccak256("validator output");
    /// @dev 10 ether node stake * 50% slash * 10% bond share.
    uint256 internal constant BOND = 0.5 ether;

    function setUp() public {
        deploySystem();
        registerNode(node);
        registerValidator(validator, 2 ether);
        registerValidator(validator2, 3 ether);
        registerValidator(validator3, 4 ether);
        ageStake();
    }

    function _challenge(bytes32 jobId) internal returns (uint256 id) {
        id = commitAndChallenge(validator, evidenceOf(NODE_KEY, receipt(jobId, NODE_OUT)), OUR_OUT, BOND);
    }

    function test_challenge_opensWithChallengerVoteAndLocks() public {
        Disputes.Evidence memory ev = evidenceOf(NODE_KEY, receipt(bytes32("job-1"), NODE_OUT));
        bytes32 leaf = disputes.receiptLeaf(ev.receipt);
        bytes32 c = commitment(validator, node, leaf, OUR_OUT, "salt");
        assertEq(c, disputes.commitmentOf(validator, node, leaf, OUR_OUT, "salt"), "same commitment as the contract");
        vm.expectEmit();
        emit Disputes.Committed(c, block.timestamp + REVEAL_WINDOW);
        vm.prank(validator);
        disputes.commit(c);
        nextBlock();
        vm.expectEmit(true, true, true, false);
        emit Disputes.DisputeOpened(0, node, validator, ev.receipt, 0, 0, 0, 0, 0);
        vm.prank(validator);
        uint256 id = disputes.challenge{value: BOND}(ev, OUR_OUT, "salt");
        Disputes.Dispute memory d = disputes.getDispute(id);
        assertEq(d.node, node, "node");
        assertEq(d.challenger, validator, "challenger");
        assertEq(d.bond, BOND, "bond");
        assertEq(d.slashTarget, 5 ether, "half of the node's bonded stake");
        assertEq(d.totalStake, 9 ether, "validator stake at the block before the challenge");
        assertEq(d.votesNodeWrong, 2 ether, "challenger's stake counted");
        assertEq(d.receiptLeaf, disputes.receiptLeaf(ev.receipt), "leaf");
        assertEq(disputes.owed(), BOND, "owed");
        assertTrue(disputes.isLocked(node), "accused node locked");
        assertTrue(disputes.isLocked(validator), "challenger locked during the vote");
        assertTrue(!disputes.isLocked(validator2), "bystander not locked");
        (bool exists, uint256 found) = disputes.disputeOf(node, d.receiptLeaf, validator);
        assertTrue(exists && found == id, "disputeOf");
    }

    function test_challenge_fromA64JobBatch() public {
        Disputes.Receipt[] memory rs = new Disputes.Receipt[](64);
        for (uint256 i = 0; i < 64; ++i) {
            rs[i] = receipt(bytes32(i), keccak256(abi.encode("out", i)));
        }
        Disputes.Evidence memory ev = evidenceInBatch(NODE_KEY, rs, 37);
        assertEq(ev.proof.length, 6, "64 leaves: 6 proof steps");
        uint256 id = commitAndChallenge(validator, ev, OUR_OUT, BOND);
        assertEq(disputes.getDispute(id).receiptLeaf, disputes.receiptLeaf(rs[37]), "leaf 37 disputed");
        // Another leaf of the same batch is its own dispute; the same one again is refused.
        Disputes.Evidence memory ev2 = evidenceInBatch(NODE_KEY, rs, 63);
        commitAndChallenge(validator2, ev2, OUR_OUT, BOND);
        assertEq(disputes.disputeCount(), 2, "two disputes");
    }

    function test_challenge_revertsOnEveryBadInput() public {
        Disputes.Receipt memory r = receipt(bytes32("job-1"), NODE_OUT);
        Disputes.Evidence memory ev = evidenceOf(NODE_KEY, r);
        bytes32 leaf = disputes.receiptLeaf(r);
        bytes32 salt = bytes32("salt");

        // No commitment at all.
        vm.expectRevert(Disputes.DisputeNotCommitted.selector);
        vm.prank(validator);
        disputes.challenge{value: BOND}(ev, OUR_OUT, salt);

        // A commitment revealed in its own block.
        vm.prank(validator);
        disputes.commit(commitment(validator, node, leaf, OUR_OUT, salt));
        vm.expectRevert(Disputes.DisputeAlreadyCommitted.selector);
        vm.prank(validator);
        disputes.commit(commitment(validator, node, leaf, OUR_OUT, salt));
        vm.expectRevert(Disputes.DisputeNotCommitted.selector);
        vm.prank(validator);
        disputes.challenge{value: BOND}(ev, OUR_OUT, salt);
        nextBlock();

        // Another output hash or salt than committed.
        vm.expectRevert(Disputes.DisputeNotCommitted.selector);
        vm.prank(validator);
        disputes.challenge{value: BOND}(ev, keccak256("else"), salt);

        // The bond scales with the slash sought: MIN_BOND is not enough against a 10 ether node.
        vm.expectRevert(abi.encodeWithSelector(Disputes.DisputeBondTooSmall.selector, MIN_BOND, BOND));
        vm.prank(validator);
        disputes.challenge{value: MIN_BOND}(ev, OUR_OUT, salt);

        // A proof for another batch.
        Disputes.Evidence memory bad = evidenceOf(NODE_KEY, r);
        bad.batch.root = keccak256("another batch");
        bad.batchSignature = signBatch(NODE_KEY, bad.batch);
        _expectRevealRevert(validator, bad, abi.encodeWithSelector(Disputes.DisputeInvalidProof.selector));

        // A leaf altered in any field no longer proves into the signed root.
        for (uint256 field = 0; field < 8; ++field) {
            // A fresh receipt each time: memory structs are shared by reference.
            Disputes.Evidence memory altered = evidenceOf(NODE_KEY, receipt(bytes32("job-1"), NODE_OUT));
            _alter(altered.receipt, field);
            _expectRevealRevert(validator, altered, abi.encodeWithSelector(Disputes.DisputeInvalidProof.selector));
        }

        // A batch signed by another key.
        Disputes.Evidence memory forged = evidenceOf(NODE_KEY, r);
        forged.batchSignature = signBatch(PAYER_KEY, forged.batch);
        _expectRevealRevert(
            validator, forged, abi.encodeWithSelector(Disputes.DisputeInvalidReceiptSignature.selector, payer, node)
        );

        // A batch of an address that is not a registered node.
        Disputes.Evidence memory stranger = evidenceOf(OTHER_NODE_KEY, r);
        _expectRevealRevert(validator, stranger, abi.encodeWithSelector(Disputes.DisputeNotANode.selector, otherNode));

        // The caller is not a validator.
        _expectRevealRevert(payer, ev, abi.encodeWithSelector(Disputes.DisputeNotValidator.selector, payer));

        // Same output as the node: nothing to dispute.
        bytes32 s2 = bytes32("s2");
        vm.prank(validator);
        disputes.commit(commitment(validator, node, leaf, NODE_OUT, s2));
        nextBlock();
        vm.expectRevert(Disputes.DisputeSameOutput.selector);
        vm.prank(validator);
        disputes.challenge{value: BOND}(ev, NODE_OUT, s2);

        // The first valid reveal opens it; the same challenger cannot dispute the same receipt twice.
        vm.prank(validator);
        disputes.challenge{value: BOND}(ev, OUR_OUT, salt);
        _expectRevealRevert(
            validator, ev, abi.encodeWithSelector(Disputes.DisputeAlreadyExists.selector, leaf, uint256(0))
        );
        // Another validator can: one challenge never pre-empts another.
        commitAndChallenge(validator2, ev, OUR_OUT, BOND);
        assertEq(disputes.disputeCount(), 2, "two disputes of one receipt");
    }

    function test_challenge_commitmentExpires() public {
        Disputes.Evidence memory ev = evidenceOf(NODE_KEY, receipt(bytes32("job-1"), NODE_OUT));
        bytes32 leaf = disputes.receiptLeaf(ev.receipt);
        vm.prank(validator);
        disputes.commit(commitment(validator, node, leaf, OUR_OUT, bytes32("s")));
        uint256 revealBy = block.timestamp + REVEAL_WINDOW;
        vm.roll(block.number + 1);
        vm.warp(revealBy + 1);
        vm.expectRevert(abi.encodeWithSelector(Disputes.DisputeCommitmentExpired.selector, revealBy));
        vm.prank(validator);
        disputes.challenge{value: BOND}(ev, OUR_OUT, bytes32("s"));
    }

    function test_vote_rules() public {
        uint256 id = _challenge(bytes32("job-1"));
        vm.expectEmit();
        emit Disputes.Voted(id, validator2, false, 3 ether);
        vm.prank(validator2);
        disputes.vote(id, false);
        vm.expectRevert(abi.encodeWithSelector(Disputes.DisputeAlreadyVoted.selector, id, validator2));
        vm.prank(validator2);
        disputes.vote(id, true);
        vm.expectRevert(abi.encodeWithSelector(Disputes.DisputeAlreadyVoted.selector, id, validator));
        vm.prank(validator);
        disputes.vote(id, false);
        vm.expectRevert(abi.encodeWithSelector(Disputes.DisputeNotValidator.selector, payer));
        vm.prank(payer);
        disputes.vote(id, true);
        vm.expectRevert(abi.encodeWithSelector(Disputes.DisputeNotFound.selector, 7));
        disputes.vote(7, true);
        vm.expectRevert(
            abi.encodeWithSelector(Disputes.DisputeVotingOpen.selector, id, block.timestamp + VOTING_PERIOD)
        );
        disputes.resolve(id);
        vm.warp(block.timestamp + VOTING_PERIOD);
        vm.expectRevert(abi.encodeWithSelector(Disputes.DisputeVotingClosed.selector, id, block.timestamp));
        vm.prank(validator3);
        disputes.vote(id, true);
    }

    function test_resolve_quorumSlashesNodePaysChallengerVotersAndBurns() public {
        uint256 id = _challenge(bytes32("job-1"));
        vm.prank(validator2);
        disputes.vote(id, true); // 2 + 3 = 5 of 9: more than half
        vm.prank(validator3);
        disputes.vote(id, false);
        assertTrue(disputes.quorumReached(id), "quorum");
        uint256 burnBefore = disputes.BURN_ADDRESS().balance;
        vm.warp(block.timestamp + VOTING_PERIOD);
        disputes.resolve(id);
        Disputes.Dispute memory d = disputes.getDispute(id);
        assertTrue(d.outcome == Disputes.Outcome.NodeSlashed, "slashed");
        assertEq(d.slashed, 5 ether, "half of 10 ether");
        assertEq(staking.stakeOf(node), 5 ether, "node keeps half");
        assertEq(d.burned, 1.5 ether, "30% burned");
        assertEq(disputes.BURN_ADDRESS().balance - burnBefore, 1.5 ether, "burn sent");
        assertEq(disputes.creditOf(validator), BOND + 1 ether, "bond back + 20% of the slash");
        assertEq(d.voterPool, 2.5 ether, "rest to the voters against the node");
        assertTrue(!disputes.isLocked(node), "node unlocked once resolved");

        vm.prank(validator);
        assertEq(disputes.claimVoteReward(id), 1 ether, "2/5 of the pool");
        vm.prank(validator2);
        assertEq(disputes.claimVoteReward(id), 1.5 ether, "3/5 of the pool");
        vm.expectRevert(abi.encodeWithSelector(Disputes.DisputeNothingToClaim.selector, validator3));
        vm.prank(validator3);
        disputes.claimVoteReward(id);
        vm.prank(validator);
        disputes.withdraw();
        assertEq(disputes.owed(), 0, "all paid");
        assertEq(address(disputes).balance, 0, "nothing left");
        vm.expectRevert(abi.encodeWithSelector(Disputes.DisputeAlreadyResolved.selector, id));
        disputes.resolve(id);
    }

    function test_resolve_challengerLosesBondToTheNodeSide() public {
        uint256 id = _challenge(bytes32("job-1"));
        vm.prank(validator2);
        disputes.vote(id, false);
        vm.prank(validator3);
        disputes.vote(id, false);
        vm.warp(block.timestamp + VOTING_PERIOD);
        disputes.resolve(id);
        Disputes.Dispute memory d = disputes.getDispute(id);
        assertTrue(d.outcome == Disputes.Outcome.ChallengerLost, "challenger lost");
        assertEq(staking.stakeOf(node), 10 ether, "node untouched");
        vm.prank(validator2);
        assertEq(disputes.claimVoteReward(id), BOND * 3 / 7, "3/7 of the bond");
        vm.prank(validator3);
        assertEq(disputes.claimVoteReward(id), BOND * 4 / 7, "4/7 of the bond");
        vm.expectRevert(abi.encodeWithSelector(Disputes.DisputeNothingToClaim.selector, validator));
        vm.prank(validator);
        disputes.claimVoteReward(id);
    }

    function test_constructor_rejectsBadParams() public {
        Disputes.Params memory p = disputeParams();
        Disputes.Params[] memory bad = new Disputes.Params[](10);
        for (uint256 i = 0; i < bad.length; ++i) {
            bad[i] = disputeParams();
        }
        bad[0].votingPeriod = 0;
        bad[1].revealWindow = 0;
        bad[2].auditWindow = 0;
        bad[3].quorumBps = 4999;
        bad[4].quorumBps = 10_000;
        bad[5].slashBps = 0;
        bad[6].challengerBps = 8000; // + 30% burn > 100%
        bad[7].minBond = 0;
        bad[8].bondBps = 10_001;
        bad[9].votingPeriod = 31 days;
        for (uint256 i = 0; i < bad.length; ++i) {
            vm.expectRevert(Disputes.DisputeInvalidParams.selector);
            new Disputes(IStaking(address(staking)), address(channels), bad[i]);
        }
        vm.expectRevert(Disputes.DisputeInvalidParams.selector);
        new Disputes(IStaking(address(0)), address(channels), p);
        new Disputes(IStaking(address(staking)), address(channels), p);
    }

    function test_receive_rejectsStrangers() public {
        (bool ok,) = address(disputes).call{value: 1}("");
        assertTrue(!ok, "plain ETH refused");
    }

    function _expectRevealRevert(address who, Disputes.Evidence memory ev, bytes memory err) internal {
        bytes32 salt = keccak256(abi.encode(who, ev.batch.root, ev.batchSignature, ev.receipt));
        bytes32 leaf = disputes.receiptLeaf(ev.receipt);
        vm.prank(who);
        disputes.commit(commitment(who, ev.batch.node, leaf, OUR_OUT, salt));
        nextBlock();
        vm.expectRevert(err);
        vm.prank(who);
        disputes.challenge{value: BOND}(ev, OUR_OUT, salt);
    }

    function _alter(Disputes.Receipt memory r, uint256 field) internal pure {
        if (field == 0) r.jobId = bytes32(uint256(r.jobId) ^ 1);
        if (field == 1) r.modelId = bytes32(uint256(r.modelId) ^ 1);
        if (field == 2) r.inputHash = bytes32(uint256(r.inputHash) ^ 1);
        if (field == 3) r.outputHash = bytes32(uint256(r.outputHash) ^ 1);
        if (field == 4) r.units += 1;
        if (field == 5) r.price += 1;
        if (field == 6) r.channelId = bytes32(uint256(r.channelId) ^ 1);
        if (field == 7) r.issuedAt += 1;
    }
}
