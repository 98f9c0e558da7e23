// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

import {Fixture} from "./utils/Fixture.sol";
import {Disputes} from "../src/Disputes.sol";
import {Staking} from "../src/Staking.sol";
import {PaymentChannels} from "../src/PaymentChannels.sol";
import {ValidatorRewards} from "../src/ValidatorRewards.sol";
import {IStaking} from "../src/interfaces/IStaking.sol";
import {IValidatorRewards} from "../src/interfaces/IValidatorRewards.sol";

/// @notice Each attack the contract review found, written as the attacker's calls followed by the assertion that it
///         gained nothing. Every one of them worked against the contracts before the redesign.
contract AttacksTest is Fixture {
    bytes32 internal constant NODE_OUT = keccak256("node output");
    bytes32 internal constant OTHER_OUT = keccak256("some other output");
    uint256 internal constant BOND = 0.5 ether; // 10% of the 5 ether slash sought from a 10 ether node

    function setUp() public {
        deploySystem();
        registerNode(node);
        registerValidator(validator, 2 ether);
        registerValidator(validator2, 3 ether);
        registerValidator(validator3, 4 ether);
        ageStake();
    }

    function _evidence(bytes32 jobId) internal view returns (Disputes.Evidence memory) {
        return evidenceOf(NODE_KEY, receipt(jobId, NODE_OUT));
    }

    // ------------------------------------------------------------------ escape by unbonding

    /// The accused node unbonds all its stake after the challenge: it is slashed from unbonding stake all the same.
    function test_attack_escapeByUnbonding_unbondDuringTheVote() public {
        uint256 id = commitAndChallenge(validator, _evidence("job"), OTHER_OUT, BOND);
        vm.prank(node);
        staking.requestUnbond(10 ether);
        vm.prank(validator2);
        disputes.vote(id, true);
        vm.warp(block.timestamp + VOTING_PERIOD);
        disputes.resolve(id);
        (uint256 unbonding,) = staking.unbondingOf(node);
        assertEq(disputes.getDispute(id).slashed, 5 ether, "slashed from unbonding stake");
        assertEq(unbonding, 5 ether, "node keeps only the other half");
        vm.warp(block.timestamp + UNBONDING_DELAY);
        uint256 before = node.balance;
        vm.prank(node);
        staking.withdraw();
        assertEq(node.balance - before, 5 ether, "node withdrew half, not all");
    }

    /// The node started unbonding days before, served a bad job, and tries to withdraw while the vote runs.
    function test_attack_escapeByUnbonding_withdrawDuringTheVote() public {
        vm.prank(node);
        staking.requestUnbond(10 ether);
        assertTrue(!staking.isActiveNode(node), "an unbonding node is not active");
        vm.warp(block.timestamp + UNBONDING_DELAY - 12 hours);
        uint256 id = commitAndChallenge(validator, _evidence("late job"), OTHER_OUT, BOND);
        vm.prank(validator3);
        disputes.vote(id, true);
        vm.warp(block.timestamp + 1 days); // the release time has passed, the vote has not ended
        vm.expectRevert(abi.encodeWithSelector(Staking.StakingLockedByDispute.selector, node));
        vm.prank(node);
        staking.withdraw();
        vm.warp(block.timestamp + VOTING_PERIOD);
        vm.expectRevert(abi.encodeWithSelector(Staking.StakingLockedByDispute.selector, node));
        vm.prank(node);
        staking.withdraw(); // still locked until someone resolves
        disputes.resolve(id);
        uint256 before = node.balance;
        vm.prank(node);
        staking.withdraw();
        assertEq(node.balance - before, 5 ether, "the slash came out of unbonding stake first");
    }

    /// Receipts issued before the unbonding request stay challengeable until the node could withdraw, because the
    /// deployment refuses an unbonding delay that is not longer than audit + reveal + voting windows.
    function test_attack_escapeByUnbonding_deploymentRefusesAShortDelay() public {
        uint256 lifetime = AUDIT_WINDOW + REVEAL_WINDOW + VOTING_PERIOD;
        Staking short = new Staking(MIN_NODE_STAKE, MIN_VALIDATOR_STAKE, lifetime);
        vm.expectRevert(abi.encodeWithSelector(Disputes.DisputeUnbondingTooShort.selector, lifetime, lifetime));
        new Disputes(IStaking(address(short)), address(channels), disputeParams());
        // Nor can a short-delay Staking be wired to a Disputes built for a longer one.
        vm.expectRevert(abi.encodeWithSelector(Staking.StakingUnbondingTooShort.selector, lifetime, lifetime));
        short.setModules(address(disputes), address(rewards));
        assertEq(disputes.disputeLifetime(), lifetime, "lifetime");
        assertLt(lifetime, UNBONDING_DELAY, "the deployed delay is longer");
    }

    // ------------------------------------------------------------------ lone challenger

    /// One minimum-stake validator challenges honest receipts over and over and nobody else votes: the node loses
    /// nothing and the challenger loses a bond each time.
    function test_attack_loneChallenger() public {
        uint256 before = validator.balance;
        for (uint256 i = 0; i < 5; ++i) {
            uint256 id = commitAndChallenge(validator, _evidence(bytes32(i)), OTHER_OUT, BOND);
            vm.warp(block.timestamp + VOTING_PERIOD);
            disputes.resolve(id);
            assertTrue(disputes.getDispute(id).outcome == Disputes.Outcome.ChallengerLost, "no quorum, no slash");
        }
        assertEq(staking.stakeOf(node), 10 ether, "node keeps all its stake");
        assertEq(before - validator.balance, 5 * BOND, "challenger lost five bonds");
        assertEq(disputes.BURN_ADDRESS().balance, 5 * BOND, "burned: nobody voted for the node");
        assertEq(disputes.creditOf(node), 0, "never the node's (its own puppet would challenge for free)");
        vm.expectRevert(abi.encodeWithSelector(Disputes.DisputeNothingToClaim.selector, validator));
        vm.prank(validator);
        disputes.claimVoteReward(0);
    }

    /// A challenger holding exactly half of the validator stake is not a quorum; weight is fixed at the challenge.
    function test_attack_loneChallenger_exactlyHalfIsNotAQuorum() public {
        vm.prank(validator3);
        staking.increaseStake{value: 1 ether}(); // 2 + 3 + 5 = 10
        ageStake();
        uint256 id = commitAndChallenge(validator3, _evidence("job"), OTHER_OUT, BOND);
        Disputes.Dispute memory d = disputes.getDispute(id);
        assertEq(d.totalStake, 10 ether, "total at the challenge");
        assertEq(d.votesNodeWrong, 5 ether, "challenger's half");
        assertTrue(!disputes.quorumReached(id), "exactly half is not more than half");
        vm.prank(validator);
        staking.requestUnbond(2 ether); // unbonding after the challenge does not change the weight it had
        vm.prank(validator);
        disputes.vote(id, true);
        assertEq(disputes.getDispute(id).votesNodeWrong, 7 ether, "5 + 2 as at the challenge");
        assertTrue(disputes.quorumReached(id), "7 of 10");
    }

    /// Receipts older than the audit window cannot be challenged.
    function test_attack_loneChallenger_oldReceipt() public {
        Disputes.Evidence memory ev = _evidence("old job");
        uint64 issuedAt = ev.receipt.issuedAt;
        vm.warp(block.timestamp + AUDIT_WINDOW + 1);
        bytes32 leaf = disputes.receiptLeaf(ev.receipt);
        vm.prank(validator);
        disputes.commit(commitment(validator, node, leaf, OTHER_OUT, bytes32("s")));
        nextBlock();
        vm.expectRevert(
            abi.encodeWithSelector(Disputes.DisputeReceiptTooOld.selector, issuedAt, issuedAt + AUDIT_WINDOW)
        );
        vm.prank(validator);
        disputes.challenge{value: BOND}(ev, OTHER_OUT, bytes32("s"));
    }

    // ------------------------------------------------------------------ late whale

    /// A whale registers during the vote to swing it: it has no weight at the challenge. Stake added by an existing
    /// validator during the vote does not count either, and voters cannot withdraw until the vote ends.
    function test_attack_lateWhale() public {
        vm.prank(validator2);
        staking.requestUnbond(1 ether); // validator2 had begun unbonding a little, long before
        vm.warp(block.timestamp + UNBONDING_DELAY - 1 days);
        nextBlock();
        uint256 id = commitAndChallenge(validator, _evidence("job"), OTHER_OUT, BOND);
        address whale = vm.addr(0x3A1E);
        vm.deal(whale, 1000 ether);
        vm.prank(whale);
        staking.registerValidator{value: 500 ether}();
        nextBlock();
        vm.expectRevert(abi.encodeWithSelector(Disputes.DisputeNotValidator.selector, whale));
        vm.prank(whale);
        disputes.vote(id, true);
        vm.prank(validator3);
        staking.increaseStake{value: 500 ether}();
        nextBlock();
        vm.prank(validator3);
        disputes.vote(id, false);
        (uint256 w3,,) = disputes.voteOf(id, validator3);
        assertEq(w3, 4 ether, "weight as at the challenge");
        vm.prank(validator2);
        disputes.vote(id, false);
        vm.warp(block.timestamp + 2 days); // validator2's unbonding is released, but it voted
        vm.expectRevert(abi.encodeWithSelector(Staking.StakingLockedByDispute.selector, validator2));
        vm.prank(validator2);
        staking.withdraw();
        vm.warp(block.timestamp + VOTING_PERIOD);
        disputes.resolve(id);
        assertTrue(disputes.getDispute(id).outcome == Disputes.Outcome.ChallengerLost, "the whale swung nothing");
        assertEq(staking.stakeOf(node), 10 ether, "node untouched");
        vm.prank(validator2);
        staking.withdraw(); // the vote is over
    }

    // ------------------------------------------------------------------ front-run challenge

    /// A copy of the pending reveal, or of the commitment, gets the copier nothing: the commitment names the
    /// challenger, and a commitment must be at least one block old.
    function test_attack_frontRunChallenge() public {
        Disputes.Evidence memory ev = _evidence("job");
        bytes32 leaf = disputes.receiptLeaf(ev.receipt);
        bytes32 salt = bytes32("secret");
        bytes32 copied = commitment(validator, node, leaf, OTHER_OUT, salt);
        // The attacker copies the commitment from the mempool and gets it mined first.
        vm.prank(validator3);
        disputes.commit(copied);
        vm.expectRevert(Disputes.DisputeAlreadyCommitted.selector);
        vm.prank(validator);
        disputes.commit(copied);
        nextBlock();
        // The attacker copies the reveal: the commitment is not its own.
        vm.expectRevert(Disputes.DisputeNotCommitted.selector);
        vm.prank(validator3);
        disputes.challenge{value: BOND}(ev, OTHER_OUT, salt);
        // Committing its own in the reveal's block does not help either.
        vm.prank(validator3);
        disputes.commit(commitment(validator3, node, leaf, OTHER_OUT, salt));
        vm.expectRevert(Disputes.DisputeNotCommitted.selector);
        vm.prank(validator3);
        disputes.challenge{value: BOND}(ev, OTHER_OUT, salt);
        // The real challenger reveals and is the challenger.
        vm.prank(validator);
        uint256 id = disputes.challenge{value: BOND}(ev, OTHER_OUT, salt);
        assertEq(disputes.getDispute(id).challenger, validator, "the committer is the challenger");
        // A copier with its own (now older) commitment opens its own dispute: it takes nothing from this one.
        nextBlock();
        vm.prank(validator3);
        uint256 copy = disputes.challenge{value: BOND}(ev, OTHER_OUT, salt);
        assertEq(disputes.getDispute(id).challenger, validator, "unchanged");
        assertTrue(copy != id, "a separate dispute");
    }

    // ------------------------------------------------------------------ review findings

    /// A quorum bought just before the reveal: stake registered one block before the challenge has no weight
    /// (votes need stake bonded `MIN_STAKE_AGE_BLOCKS` before), so the whale can neither challenge nor vote.
    function test_attack_quorumBoughtJustBeforeTheReveal() public {
        address whale = vm.addr(0x3A1E);
        vm.deal(whale, 1000 ether);
        Disputes.Evidence memory ev = _evidence("honest job");
        bytes32 leaf = disputes.receiptLeaf(ev.receipt);
        vm.prank(whale);
        staking.registerValidator{value: 100 ether}();
        vm.prank(whale);
        disputes.commit(commitment(whale, node, leaf, OTHER_OUT, "s"));
        nextBlock();
        vm.expectRevert(abi.encodeWithSelector(Disputes.DisputeNotValidator.selector, whale));
        vm.prank(whale);
        disputes.challenge{value: BOND}(ev, OTHER_OUT, "s");
        // With an accomplice's challenge, the whale's vote weighs nothing either.
        uint256 id = commitAndChallenge(validator, ev, OTHER_OUT, BOND);
        vm.expectRevert(abi.encodeWithSelector(Disputes.DisputeNotValidator.selector, whale));
        vm.prank(whale);
        disputes.vote(id, true);
        assertEq(disputes.getDispute(id).totalStake, 109 ether, "young stake still counts in the total");
        vm.warp(block.timestamp + VOTING_PERIOD);
        disputes.resolve(id);
        assertEq(staking.stakeOf(node), 10 ether, "honest node untouched");
    }

    /// A node's puppet validator challenges the node's own bad receipt first, hoping to fail and block the honest
    /// challenge: the honest challenge opens all the same, the node is slashed once, and the puppet's lost bond is
    /// burned, not returned to the node.
    function test_attack_puppetPreemptsAnHonestChallenge() public {
        Disputes.Evidence memory ev = _evidence("bad job");
        uint256 puppetDispute = commitAndChallenge(validator, ev, OTHER_OUT, BOND); // the puppet (2 of 9)
        uint256 honest = commitAndChallenge(validator3, ev, keccak256("the right output"), BOND);
        vm.prank(validator2);
        disputes.vote(honest, true); // 4 + 3 of 9
        vm.warp(block.timestamp + VOTING_PERIOD);
        disputes.resolve(puppetDispute);
        disputes.resolve(honest);
        assertTrue(disputes.getDispute(honest).outcome == Disputes.Outcome.NodeSlashed, "the honest one wins");
        assertEq(staking.stakeOf(node), 5 ether, "slashed once");
        assertTrue(disputes.getDispute(puppetDispute).outcome == Disputes.Outcome.ChallengerLost, "puppet alone");
        assertEq(disputes.creditOf(node), 0, "the node recovers nothing");
        assertEq(disputes.creditOf(validator3), BOND + 1 ether, "bond + 20% of the slash");
    }

    /// Two winning disputes of one bad receipt slash the node once.
    function test_oneReceiptIsSlashedOnce() public {
        Disputes.Evidence memory ev = _evidence("bad job");
        uint256 a = commitAndChallenge(validator2, ev, OTHER_OUT, BOND);
        uint256 b = commitAndChallenge(validator3, ev, OTHER_OUT, BOND);
        vm.prank(validator3);
        disputes.vote(a, true);
        vm.prank(validator2);
        disputes.vote(b, true);
        vm.warp(block.timestamp + VOTING_PERIOD);
        disputes.resolve(a);
        disputes.resolve(b);
        assertEq(staking.stakeOf(node), 5 ether, "one slash of 50%");
        assertEq(disputes.getDispute(b).slashed, 0, "the second finds it slashed");
        assertEq(disputes.creditOf(validator3), BOND, "its challenger gets its bond back");
    }

    /// A node with nothing to slash cannot be disputed (it would only lock honest voters' withdrawals).
    function test_attack_disputeOfANodeWithoutStake() public {
        vm.prank(node);
        staking.requestUnbond(10 ether);
        vm.warp(block.timestamp + UNBONDING_DELAY);
        vm.prank(node);
        staking.withdraw();
        Disputes.Evidence memory ev = _evidence("job");
        bytes32 leaf = disputes.receiptLeaf(ev.receipt);
        vm.prank(validator);
        disputes.commit(commitment(validator, node, leaf, OTHER_OUT, "s"));
        nextBlock();
        vm.expectRevert(abi.encodeWithSelector(Disputes.DisputeNothingToSlash.selector, node));
        vm.prank(validator);
        disputes.challenge{value: BOND}(ev, OTHER_OUT, "s");
    }

    /// An expired commitment can be made again (it does not block its owner forever).
    function test_anExpiredCommitmentCanBeRenewed() public {
        bytes32 c = commitment(validator, node, bytes32("leaf"), OTHER_OUT, "s");
        vm.prank(validator);
        disputes.commit(c);
        vm.expectRevert(Disputes.DisputeAlreadyCommitted.selector);
        disputes.commit(c);
        vm.warp(block.timestamp + REVEAL_WINDOW + 1);
        disputes.commit(c);
    }

    // ------------------------------------------------------------------ parameters

    /// `closesAt` no longer wraps: a close started after 2106 still gives the payee its window.
    function test_attack_closesAtBeyond2106() public {
        vm.warp(uint256(type(uint32).max) + 1000);
        vm.prank(payer);
        bytes32 id = channels.open{value: 1 ether}(node, uint64(block.timestamp + 30 days));
        vm.prank(payer);
        channels.startClose(id);
        assertEq(channels.getChannel(id).closesAt, block.timestamp + CHALLENGE_WINDOW, "no wrap");
        vm.warp(block.timestamp + 1 hours);
        channels.redeem(id, 0.5 ether, signVoucher(PAYER_KEY, id, 0.5 ether)); // the payee's window is open
        vm.expectRevert(
            abi.encodeWithSelector(PaymentChannels.ChannelStillOpen.selector, id, block.timestamp + 23 hours)
        );
        vm.prank(payer);
        channels.withdraw(id);
    }

    /// Zero or absurd windows are refused at deployment.
    function test_attack_zeroWindowsRefused() public {
        IValidatorRewards r = IValidatorRewards(address(rewards));
        vm.expectRevert(PaymentChannels.ChannelInvalidParams.selector);
        new PaymentChannels(r, FEE_BPS, 0);
        vm.expectRevert(PaymentChannels.ChannelInvalidParams.selector);
        new PaymentChannels(r, FEE_BPS, 366 days);
        Disputes.Params memory p = disputeParams();
        p.votingPeriod = 0;
        vm.expectRevert(Disputes.DisputeInvalidParams.selector);
        new Disputes(IStaking(address(staking)), address(channels), p);
    }

    /// A node whose stake falls under the minimum is not an active node.
    function test_attack_nodeUnderMinimumIsNotActive() public {
        assertTrue(staking.isActiveNode(node), "active at 10 ether");
        vm.prank(node);
        staking.requestUnbond(1 ether);
        assertTrue(!staking.isActiveNode(node), "unbonding any stake: on its way out, not active");
        vm.warp(block.timestamp + UNBONDING_DELAY);
        vm.prank(node);
        staking.withdraw();
        assertTrue(staking.isActiveNode(node), "9 ether, nothing unbonding");
        vm.prank(node);
        staking.requestUnbond(8.5 ether);
        assertTrue(!staking.isActiveNode(node), "0.5 ether is under the 1 ether minimum");
        assertTrue(!staking.isActiveNode(validator), "a validator is not a node");
    }
}
