// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

import {Test} from "../utils/Test.sol";
import {Staking} from "../../src/Staking.sol";
import {IStaking} from "../../src/interfaces/IStaking.sol";
import {PaymentChannels} from "../../src/PaymentChannels.sol";
import {ValidatorRewards} from "../../src/ValidatorRewards.sol";
import {Disputes} from "../../src/Disputes.sol";

/// @notice Drives every contract with bounded random actions and keeps ghost totals of money in and out. Every
///         action checks its preconditions first (forge runs with `fail_on_revert = true`); the only reverts it
///         accepts are asserted ones (a withdrawal locked by a dispute).
contract Handler is Test {
    Staking internal immutable staking;
    PaymentChannels internal immutable channels;
    ValidatorRewards internal immutable rewards;
    Disputes internal immutable disputes;

    uint256[2] internal payerKeys = [uint256(0xA1), 0xA2];
    /// @dev The first two are registered by the test's setUp; the third registers through the handler.
    uint256[3] internal nodeKeys = [uint256(0xB1), 0xB2, 0xB3];
    /// @dev The first three are registered by the test's setUp; the fourth registers through the handler (late).
    uint256[4] internal validatorKeys = [uint256(0xC1), 0xC2, 0xC3, 0xC4];

    bytes32[] public channelIds;
    mapping(bytes32 => uint256) public payerKeyOf;
    /// @dev Ghost: highest cumulative amount that actually paid out per channel.
    mapping(bytes32 => uint256) public ghostRedeemed;
    mapping(bytes32 => uint256) public ghostDeposit;
    mapping(bytes32 => bool) public ghostWithdrawn;
    uint256 public ghostChannelsIn;
    uint256 public ghostChannelsOut;
    uint256 public ghostPaidByRedemptions;
    uint256 public redemptions;
    uint256 public replays;
    uint256[] public disputeIds;
    /// @dev Ghost: what nodes lost to resolutions, measured from their bonded stake.
    uint256 public ghostSlashed;
    uint256 public lockedWithdrawals;
    /// @dev Ghost: vote weight cast per dispute, computed here from Staking's checkpoints (not by Disputes).
    mapping(uint256 => uint256) public ghostVotes;
    uint256 internal jobCounter;

    constructor(Staking s, PaymentChannels c, ValidatorRewards r, Disputes d) {
        staking = s;
        channels = c;
        rewards = r;
        disputes = d;
    }

    function channelCount() external view returns (uint256) {
        return channelIds.length;
    }

    function disputeCount() external view returns (uint256) {
        return disputeIds.length;
    }

    function validatorAt(uint256 i) external view returns (address) {
        return vm.addr(validatorKeys[i]);
    }

    function nodeAt(uint256 i) external view returns (address) {
        return vm.addr(nodeKeys[i]);
    }

    // ------------------------------------------------------------------ channels

    function open(uint256 payerSeed, uint256 nodeSeed, uint256 amountSeed, uint256 expirySeed) external {
        uint256 key = payerKeys[payerSeed % 2];
        address payer = vm.addr(key);
        uint256 amount = bound(amountSeed, 1, 10 ether);
        vm.deal(payer, payer.balance + amount);
        vm.prank(payer);
        bytes32 id = channels.open{value: amount}(
            vm.addr(nodeKeys[nodeSeed % 3]), uint64(block.timestamp + bound(expirySeed, 1 hours, 60 days))
        );
        channelIds.push(id);
        payerKeyOf[id] = key;
        ghostDeposit[id] = amount;
        ghostChannelsIn += amount;
    }

    function topUp(uint256 idSeed, uint256 amountSeed) external {
        if (channelIds.length == 0) return;
        bytes32 id = channelIds[idSeed % channelIds.length];
        PaymentChannels.Channel memory ch = channels.getChannel(id);
        if (ch.closesAt != 0 || block.timestamp >= channels.redeemDeadline(id)) return;
        uint256 amount = bound(amountSeed, 1, 5 ether);
        vm.deal(ch.payer, ch.payer.balance + amount);
        vm.prank(ch.payer);
        channels.topUp{value: amount}(id);
        ghostDeposit[id] += amount;
        ghostChannelsIn += amount;
    }

    function redeem(uint256 idSeed, uint256 amountSeed) external {
        if (channelIds.length == 0) return;
        bytes32 id = channelIds[idSeed % channelIds.length];
        PaymentChannels.Channel memory ch = channels.getChannel(id);
        if (block.timestamp >= channels.redeemDeadline(id)) return;
        uint256 cumulative = bound(amountSeed, 1, ch.deposit);
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(payerKeyOf[id], channels.voucherDigest(id, cumulative));
        uint256 paid = channels.redeem(id, cumulative, abi.encodePacked(r, s, v));
        _account(id, cumulative, paid);
    }

    function redeemMany(uint256 seed, uint256 amountSeed) external {
        if (channelIds.length == 0) return;
        address payee = vm.addr(nodeKeys[seed % 3]);
        PaymentChannels.SignedVoucher[] memory batch = new PaymentChannels.SignedVoucher[](3);
        uint256 n;
        for (uint256 i = 0; i < channelIds.length && n < 3; ++i) {
            bytes32 id = channelIds[(seed % channelIds.length + i) % channelIds.length];
            PaymentChannels.Channel memory ch = channels.getChannel(id);
            if (ch.payee != payee || block.timestamp >= channels.redeemDeadline(id)) continue;
            bool dup;
            for (uint256 j = 0; j < n; ++j) {
                dup = dup || batch[j].channelId == id;
            }
            if (dup) continue;
            uint256 cumulative = bound(uint256(keccak256(abi.encode(amountSeed, i))), 1, ch.deposit);
            (uint8 v, bytes32 r, bytes32 s) = vm.sign(payerKeyOf[id], channels.voucherDigest(id, cumulative));
            batch[n++] =
                PaymentChannels.SignedVoucher(id, cumulative, r, bytes32(uint256(s) | (uint256(v - 27) << 255)));
        }
        if (n == 0) return;
        assembly {
            mstore(batch, n)
        }
        uint256[] memory before = new uint256[](n);
        for (uint256 j = 0; j < n; ++j) {
            before[j] = channels.getChannel(batch[j].channelId).redeemed;
        }
        uint256 total = channels.redeemMany(batch);
        uint256 sum;
        for (uint256 j = 0; j < n; ++j) {
            uint256 after_ = channels.getChannel(batch[j].channelId).redeemed;
            uint256 paid = after_ - before[j];
            sum += paid;
            _account(batch[j].channelId, batch[j].cumulativeAmount, paid);
        }
        assertEq(sum, total, "batch total = per-channel increments");
    }

    function replay(uint256 idSeed) external {
        if (channelIds.length == 0) return;
        bytes32 id = channelIds[idSeed % channelIds.length];
        uint256 cumulative = ghostRedeemed[id];
        if (cumulative == 0 || block.timestamp >= channels.redeemDeadline(id)) return;
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(payerKeyOf[id], channels.voucherDigest(id, cumulative));
        uint256 paid = channels.redeem(id, cumulative, abi.encodePacked(r, s, v));
        assertEq(paid, 0, "a replayed voucher pays nothing");
        replays++;
    }

    function startClose(uint256 idSeed) external {
        if (channelIds.length == 0) return;
        bytes32 id = channelIds[idSeed % channelIds.length];
        PaymentChannels.Channel memory ch = channels.getChannel(id);
        if (ch.closesAt != 0 || block.timestamp >= channels.redeemDeadline(id)) return;
        vm.prank(ch.payer);
        channels.startClose(id);
    }

    function withdrawChannel(uint256 idSeed) external {
        if (channelIds.length == 0) return;
        bytes32 id = channelIds[idSeed % channelIds.length];
        if (block.timestamp < channels.redeemDeadline(id)) return;
        PaymentChannels.Channel memory ch = channels.getChannel(id);
        vm.prank(ch.payer);
        uint256 refund = channels.withdraw(id);
        assertEq(refund, ghostWithdrawn[id] ? 0 : ghostDeposit[id] - ghostRedeemed[id], "refund = unredeemed");
        ghostWithdrawn[id] = true;
        ghostChannelsOut += refund;
    }

    function _account(bytes32 id, uint256 cumulative, uint256 paid) private {
        if (paid == 0) {
            assertLe(cumulative, ghostRedeemed[id], "nothing paid only for stale vouchers");
            return;
        }
        assertEq(paid, cumulative - ghostRedeemed[id], "pays exactly the increment");
        ghostRedeemed[id] = cumulative;
        ghostPaidByRedemptions += paid;
        ghostChannelsOut += paid;
        redemptions++;
    }

    // ------------------------------------------------------------------ staking + rewards

    function registerValidator(uint256 amountSeed) external {
        address who = vm.addr(validatorKeys[3]);
        if (staking.roleOf(who) != IStaking.Role.None) return;
        uint256 amount = bound(amountSeed, 2 ether, 50 ether);
        vm.deal(who, who.balance + amount);
        vm.prank(who);
        staking.registerValidator{value: amount}();
    }

    function registerNode(uint256 amountSeed) external {
        address who = vm.addr(nodeKeys[2]);
        if (staking.roleOf(who) != IStaking.Role.None) return;
        uint256 amount = bound(amountSeed, 1 ether, 20 ether);
        vm.deal(who, who.balance + amount);
        vm.prank(who);
        staking.registerNode{value: amount}("peer-3", "ipfs://n3");
    }

    function increaseStake(uint256 seed, uint256 amountSeed) external {
        address who = _registered(seed);
        if (who == address(0)) return;
        uint256 amount = bound(amountSeed, 1, 10 ether);
        vm.deal(who, who.balance + amount);
        vm.prank(who);
        staking.increaseStake{value: amount}();
    }

    function requestUnbond(uint256 seed, uint256 amountSeed) external {
        address who = _registered(seed);
        if (who == address(0) || staking.stakeOf(who) == 0) return;
        uint256 amount = bound(amountSeed, 1, staking.stakeOf(who)); // before the prank: it applies to one call
        vm.prank(who);
        staking.requestUnbond(amount);
    }

    /// Withdraw unbonded stake, for validators and nodes alike; under a dispute it must be refused.
    function withdrawStake(uint256 seed) external {
        address who = _participant(seed);
        (uint256 amount, uint256 releaseAt) = staking.unbondingOf(who);
        if (amount == 0) return;
        if (block.timestamp < releaseAt) vm.warp(releaseAt); // time passes until the release
        bool locked = disputes.isLocked(who);
        vm.prank(who);
        try staking.withdraw() {
            assertTrue(!locked, "withdrew while a dispute locked it");
        } catch (bytes memory err) {
            assertTrue(locked, "withdraw refused without a dispute");
            bytes memory expected = abi.encodeWithSelector(Staking.StakingLockedByDispute.selector, who);
            assertEq(keccak256(err), keccak256(expected), "refused for the lock, not something else");
            lockedWithdrawals++;
        }
    }

    function attest(uint256 seed) external {
        address who = vm.addr(validatorKeys[seed % 4]);
        uint256 epoch = rewards.currentEpoch();
        if (!staking.isActiveValidator(who) || rewards.hasAttested(who, epoch)) return;
        if (rewards.attestWeight(who, epoch) == 0) return;
        vm.prank(who);
        rewards.attest(epoch, seed % 100, keccak256(abi.encode(seed)));
    }

    function depositFees(uint256 amountSeed) external {
        uint256 amount = bound(amountSeed, 0, 1 ether);
        vm.deal(address(this), address(this).balance + amount);
        rewards.depositFees{value: amount}();
    }

    function claim(uint256 seed, uint256 maxSeed) external {
        address who = vm.addr(validatorKeys[seed % 4]);
        if (rewards.unclaimedEpochs(who) == 0) return;
        vm.prank(who);
        rewards.claim(bound(maxSeed, 1, 5));
    }

    // ------------------------------------------------------------------ disputes

    /// Commit, next block, reveal: a validator challenges a node's receipt (honest or not, the contracts cannot
    /// tell; the vote decides).
    function challenge(uint256 seed, uint256 bondSeed) external {
        address who = vm.addr(validatorKeys[seed % 4]);
        uint256 nodeKey = nodeKeys[(seed / 3) % 3];
        if (!staking.isActiveValidator(who) || staking.roleOf(vm.addr(nodeKey)) != IStaking.Role.Node) return;
        Disputes.Evidence memory ev = _evidence(nodeKey);
        bytes32 leaf = disputes.receiptLeaf(ev.receipt);
        vm.prank(who);
        disputes.commit(keccak256(abi.encode(who, ev.batch.node, leaf, keccak256("other"), bytes32(seed))));
        vm.roll(block.number + 1);
        vm.warp(block.timestamp + 12);
        uint256 weight = _expectedWeight(who, block.number - 1);
        if (weight == 0 || staking.bondedOf(ev.batch.node) * 5000 / 10_000 == 0) return;
        uint256 bond = disputes.requiredBond(ev.batch.node) + bound(bondSeed, 0, 1 ether);
        vm.deal(who, who.balance + bond);
        vm.prank(who);
        uint256 id = disputes.challenge{value: bond}(ev, keccak256("other"), bytes32(seed));
        disputeIds.push(id);
        ghostVotes[id] += weight;
    }

    /// @dev A fresh receipt signed alone (a batch of one) by the node with `nodeKey`.
    function _evidence(uint256 nodeKey) private returns (Disputes.Evidence memory ev) {
        ev.receipt = Disputes.Receipt({
            jobId: bytes32(++jobCounter),
            modelId: keccak256("model"),
            inputHash: keccak256(abi.encode(jobCounter)),
            outputHash: keccak256("node output"),
            units: 1,
            price: 1e13,
            channelId: bytes32(0),
            issuedAt: uint64(block.timestamp)
        });
        ev.batch = Disputes.ReceiptBatch({
            root: disputes.receiptLeaf(ev.receipt), node: vm.addr(nodeKey), count: 1, issuedAt: uint64(block.timestamp)
        });
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(nodeKey, disputes.batchDigest(ev.batch));
        ev.batchSignature = abi.encodePacked(r, s, v);
    }

    function voteOn(uint256 idSeed, uint256 voterSeed, bool nodeWrong) external {
        if (disputeIds.length == 0) return;
        uint256 id = disputeIds[idSeed % disputeIds.length];
        address who = vm.addr(validatorKeys[voterSeed % 4]);
        (uint256 weight,,) = disputes.voteOf(id, who);
        Disputes.Dispute memory d = disputes.getDispute(id);
        if (weight != 0 || block.timestamp >= d.deadline) return;
        uint256 w = _expectedWeight(who, d.snapshotBlock);
        if (w == 0) return;
        vm.prank(who);
        disputes.vote(id, nodeWrong);
        ghostVotes[id] += w;
    }

    function resolve(uint256 idSeed) external {
        if (disputeIds.length == 0) return;
        uint256 id = disputeIds[idSeed % disputeIds.length];
        Disputes.Dispute memory d = disputes.getDispute(id);
        if (d.outcome != Disputes.Outcome.Pending) return;
        if (block.timestamp < d.deadline) vm.warp(d.deadline); // time passes until the vote ends
        bool quorum = disputes.quorumReached(id);
        uint256 before = staking.bondedOf(d.node);
        disputes.resolve(id);
        uint256 lost = before - staking.bondedOf(d.node);
        assertTrue(quorum || lost == 0, "no slash without quorum");
        ghostSlashed += lost;
    }

    function claimDispute(uint256 idSeed, uint256 voterSeed) external {
        if (disputeIds.length == 0) return;
        uint256 id = disputeIds[idSeed % disputeIds.length];
        address who = vm.addr(validatorKeys[voterSeed % 4]);
        Disputes.Dispute memory d = disputes.getDispute(id);
        (uint256 weight, bool nodeWrong, bool claimed) = disputes.voteOf(id, who);
        bool won = d.outcome == Disputes.Outcome.NodeSlashed ? nodeWrong : !nodeWrong;
        if (d.outcome != Disputes.Outcome.Pending && weight != 0 && !claimed && won) {
            vm.prank(who);
            disputes.claimVoteReward(id);
        }
        _withdrawCredit(who);
        _withdrawCredit(d.node);
    }

    // ------------------------------------------------------------------ time

    function warp(uint256 secondsSeed) external {
        vm.warp(block.timestamp + bound(secondsSeed, 1, 1 days));
    }

    function roll(uint256 blocksSeed) external {
        vm.roll(block.number + bound(blocksSeed, 1, 150));
    }

    /// @dev The weight a vote should have: stake at the snapshot, capped by stake `MIN_STAKE_AGE_BLOCKS` earlier.
    function _expectedWeight(address who, uint256 snapshot) private view returns (uint256) {
        uint256 age = disputes.MIN_STAKE_AGE_BLOCKS();
        if (snapshot < age) return 0;
        uint256 a = staking.validatorStakeAt(who, snapshot);
        uint256 b = staking.validatorStakeAt(who, snapshot - age);
        return a < b ? a : b;
    }

    function _withdrawCredit(address who) private {
        if (disputes.creditOf(who) == 0) return;
        vm.prank(who);
        disputes.withdraw();
    }

    function _registered(uint256 seed) private view returns (address who) {
        who = _participant(seed);
        if (staking.roleOf(who) == IStaking.Role.None) who = address(0);
    }

    /// @dev One of the four validators or three nodes.
    function _participant(uint256 seed) private view returns (address) {
        uint256 i = seed % 7;
        return i < 4 ? vm.addr(validatorKeys[i]) : vm.addr(nodeKeys[i - 4]);
    }

    receive() external payable {}
}
