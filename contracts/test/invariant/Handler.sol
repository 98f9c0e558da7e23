// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

import {Test} from "../utils/Test.sol";
import {Staking} from "../../src/Staking.sol";
import {IStaking} from "../../src/interfaces/IStaking.sol";
import {PaymentChannels} from "../../src/PaymentChannels.sol";
import {ValidatorRewards} from "../../src/ValidatorRewards.sol";
import {Disputes} from "../../src/Disputes.sol";

/// @notice Drives every contract with bounded random actions and keeps ghost totals of money in and out.
contract Handler is Test {
    Staking internal immutable staking;
    PaymentChannels internal immutable channels;
    ValidatorRewards internal immutable rewards;
    Disputes internal immutable disputes;

    uint256[2] internal payerKeys = [uint256(0xA1), 0xA2];
    uint256[2] internal nodeKeys = [uint256(0xB1), 0xB2];
    uint256[3] internal validatorKeys = [uint256(0xC1), 0xC2, 0xC3];

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

    constructor(Staking s, PaymentChannels c, ValidatorRewards r, Disputes d) {
        staking = s;
        channels = c;
        rewards = r;
        disputes = d;
    }

    function channelCount() external view returns (uint256) {
        return channelIds.length;
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
            vm.addr(nodeKeys[nodeSeed % 2]), uint64(block.timestamp + bound(expirySeed, 1 hours, 60 days))
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
        address payee = vm.addr(nodeKeys[seed % 2]);
        PaymentChannels.SignedVoucher[] memory batch = new PaymentChannels.SignedVoucher[](3);
        uint256 n;
        for (uint256 i = 0; i < channelIds.length && n < 3; ++i) {
            bytes32 id = channelIds[(seed + i) % channelIds.length];
            PaymentChannels.Channel memory ch = channels.getChannel(id);
            if (ch.payee != payee || block.timestamp >= channels.redeemDeadline(id)) continue;
            bool dup;
            for (uint256 j = 0; j < n; ++j) {
                dup = dup || batch[j].channelId == id;
            }
            if (dup) continue;
            uint256 cumulative = bound(uint256(keccak256(abi.encode(amountSeed, i))), 1, ch.deposit);
            (uint8 v, bytes32 r, bytes32 s) = vm.sign(payerKeyOf[id], channels.voucherDigest(id, cumulative));
            batch[n++] = PaymentChannels.SignedVoucher(id, cumulative, abi.encodePacked(r, s, v));
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

    function registerValidator(uint256 seed, uint256 amountSeed) external {
        address who = vm.addr(validatorKeys[seed % 3]);
        if (staking.roleOf(who) != IStaking.Role.None) return;
        uint256 amount = bound(amountSeed, 2 ether, 50 ether);
        vm.deal(who, who.balance + amount);
        vm.prank(who);
        staking.registerValidator{value: amount}();
    }

    function increaseStake(uint256 seed, uint256 amountSeed) external {
        address who = _registeredValidator(seed);
        if (who == address(0)) return;
        uint256 amount = bound(amountSeed, 1, 10 ether);
        vm.deal(who, who.balance + amount);
        vm.prank(who);
        staking.increaseStake{value: amount}();
    }

    function requestUnbond(uint256 seed, uint256 amountSeed) external {
        address who = _registeredValidator(seed);
        if (who == address(0) || staking.stakeOf(who) == 0) return;
        vm.prank(who);
        staking.requestUnbond(bound(amountSeed, 1, staking.stakeOf(who)));
    }

    function withdrawStake(uint256 seed) external {
        address who = vm.addr(validatorKeys[seed % 3]);
        (uint256 amount, uint256 releaseAt) = staking.unbondingOf(who);
        if (amount == 0 || block.timestamp < releaseAt) return;
        vm.prank(who);
        staking.withdraw();
    }

    function attest(uint256 seed) external {
        address who = vm.addr(validatorKeys[seed % 3]);
        uint256 epoch = rewards.currentEpoch();
        if (!staking.isActiveValidator(who) || rewards.weightOf(who, epoch) != 0) return;
        vm.prank(who);
        rewards.attest(epoch, seed % 100, keccak256(abi.encode(seed)));
    }

    function claim(uint256 seed) external {
        address who = vm.addr(validatorKeys[seed % 3]);
        if (rewards.pendingRewards(who) == 0) return;
        vm.prank(who);
        rewards.claim();
    }

    function rollOver(uint256 epochSeed) external {
        uint256 current = rewards.currentEpoch();
        if (current == 0) return;
        uint256 epoch = epochSeed % current;
        (uint256 fees, uint256 weight,) = rewards.epochInfo(epoch);
        if (fees == 0 || weight != 0) return;
        rewards.rollOver(epoch);
    }

    // ------------------------------------------------------------------ disputes

    function challenge(uint256 seed, bytes32 jobId) external {
        address who = vm.addr(validatorKeys[seed % 3]);
        if (!staking.isActiveValidator(who)) return;
        uint256 nodeKey = nodeKeys[seed % 2];
        Disputes.Receipt memory r = Disputes.Receipt({
            jobId: jobId,
            modelId: keccak256("model"),
            inputHash: keccak256(abi.encode(jobId)),
            outputHash: keccak256("node output"),
            price: 1e13,
            node: vm.addr(nodeKey)
        });
        bytes32 digest = disputes.receiptDigest(r);
        (uint8 v, bytes32 rr, bytes32 s) = vm.sign(nodeKey, digest);
        uint256 bond = 0.1 ether;
        vm.deal(who, who.balance + bond);
        vm.prank(who);
        try disputes.challenge{value: bond}(r, abi.encodePacked(rr, s, v), keccak256("other")) returns (uint256 id) {
            disputeIds.push(id);
        } catch {}
    }

    function voteOn(uint256 idSeed, uint256 voterSeed, bool nodeWrong) external {
        if (disputeIds.length == 0) return;
        uint256 id = disputeIds[idSeed % disputeIds.length];
        address who = vm.addr(validatorKeys[voterSeed % 3]);
        (uint256 weight,,) = disputes.voteOf(id, who);
        Disputes.Dispute memory d = disputes.getDispute(id);
        if (weight != 0 || block.timestamp >= d.deadline || !staking.isActiveValidator(who)) return;
        vm.prank(who);
        disputes.vote(id, nodeWrong);
    }

    function resolve(uint256 idSeed) external {
        if (disputeIds.length == 0) return;
        uint256 id = disputeIds[idSeed % disputeIds.length];
        Disputes.Dispute memory d = disputes.getDispute(id);
        if (d.outcome != Disputes.Outcome.Pending || block.timestamp < d.deadline) return;
        disputes.resolve(id);
    }

    function claimDispute(uint256 idSeed, uint256 voterSeed) external {
        if (disputeIds.length == 0) return;
        uint256 id = disputeIds[idSeed % disputeIds.length];
        address who = vm.addr(validatorKeys[voterSeed % 3]);
        vm.prank(who);
        try disputes.claimVoteReward(id) {} catch {}
        if (disputes.creditOf(who) > 0) {
            vm.prank(who);
            disputes.withdraw();
        }
    }

    // ------------------------------------------------------------------ time

    function warp(uint256 secondsSeed) external {
        vm.warp(block.timestamp + bound(secondsSeed, 1, 5 days));
    }

    function roll(uint256 blocksSeed) external {
        vm.roll(block.number + bound(blocksSeed, 1, 150));
    }

    function _registeredValidator(uint256 seed) private view returns (address who) {
        who = vm.addr(validatorKeys[seed % 3]);
        if (staking.roleOf(who) != IStaking.Role.Validator) who = address(0);
    }
}
