// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

import {Fixture} from "./utils/Fixture.sol";
import {PaymentChannels} from "../src/PaymentChannels.sol";
import {IValidatorRewards} from "../src/interfaces/IValidatorRewards.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

/// @dev A payee contract that tries to redeem again from inside the payment it receives.
contract ReentrantPayee {
    PaymentChannels internal immutable channels;
    bytes32 internal channelId;
    uint256 internal cumulative;
    bytes internal signature;
    bool public reentryBlocked;
    uint256 public received;

    constructor(PaymentChannels c) {
        channels = c;
    }

    function arm(bytes32 id, uint256 amount, bytes calldata sig) external {
        channelId = id;
        cumulative = amount;
        signature = sig;
    }

    receive() external payable {
        received += msg.value;
        try channels.redeem(channelId, cumulative, signature) {}
        catch (bytes memory reason) {
            reentryBlocked = bytes4(reason) == ReentrancyGuardTransient.ReentrancyGuardReentrantCall.selector;
        }
    }
}

contract PaymentChannelsTest is Fixture {
    function setUp() public {
        deploySystem();
    }

    // ---------------------------------------------------------------- open / topUp

    function test_open_storesChannelAndEmits() public {
        uint64 expiry = uint64(block.timestamp + 30 days);
        vm.expectEmit(false, true, true, true);
        emit PaymentChannels.ChannelOpened(bytes32(0), payer, node, 3 ether, expiry);
        vm.prank(payer);
        bytes32 id = channels.open{value: 3 ether}(node, expiry);
        PaymentChannels.Channel memory ch = channels.getChannel(id);
        assertEq(ch.payer, payer, "payer");
        assertEq(ch.payee, node, "payee");
        assertEq(ch.deposit, 3 ether, "deposit");
        assertEq(ch.redeemed, 0, "redeemed");
        assertEq(ch.expiry, expiry, "expiry");
        assertEq(channels.outstanding(), 3 ether, "outstanding");
        assertEq(address(channels).balance, 3 ether, "balance");
    }

    function test_open_givesDistinctIds() public {
        assertTrue(openChannel(1 ether) != openChannel(1 ether), "ids differ");
    }

    function test_open_revertsOnInvalidParams() public {
        vm.startPrank(payer);
        vm.expectRevert(PaymentChannels.ChannelInvalidParams.selector);
        channels.open{value: 0}(node, uint64(block.timestamp + 1));
        vm.expectRevert(PaymentChannels.ChannelInvalidParams.selector);
        channels.open{value: 1}(address(0), uint64(block.timestamp + 1));
        vm.expectRevert(PaymentChannels.ChannelInvalidParams.selector);
        channels.open{value: 1}(payer, uint64(block.timestamp + 1));
        vm.expectRevert(PaymentChannels.ChannelInvalidParams.selector);
        channels.open{value: 1}(node, uint64(block.timestamp));
        // Times and amounts beyond what one storage slot holds are refused, never truncated.
        vm.expectRevert(PaymentChannels.ChannelInvalidParams.selector);
        channels.open{value: 1}(node, uint64(type(uint40).max) + 1);
        vm.deal(payer, uint256(type(uint88).max) + 2);
        vm.expectRevert(PaymentChannels.ChannelInvalidParams.selector);
        channels.open{value: uint256(type(uint88).max) + 1}(node, uint64(block.timestamp + 1));
        bytes32 id = channels.open{value: type(uint88).max}(node, uint64(block.timestamp + 1));
        vm.expectRevert(PaymentChannels.ChannelInvalidParams.selector);
        channels.topUp{value: 1}(id);
        vm.stopPrank();
    }

    function test_open_idNamesThePayer() public {
        bytes32 id = openChannel(1 ether);
        assertEq(address(uint160(uint256(id) >> 96)), payer, "payer in the top 160 bits");
        assertEq(channels.getChannel(id).payer, payer, "getChannel");
        assertEq(channels.getChannel(bytes32(uint256(id) + 1)).payer, address(0), "a neighbouring id is no channel");
    }

    function test_constructor_revertsOnFeeOver100Percent() public {
        vm.expectRevert(PaymentChannels.ChannelInvalidParams.selector);
        new PaymentChannels(IValidatorRewards(address(rewards)), 10_001, 1);
    }

    function test_topUp_addsDeposit() public {
        bytes32 id = openChannel(1 ether);
        vm.expectEmit();
        emit PaymentChannels.ChannelToppedUp(id, 2 ether, 3 ether);
        vm.prank(payer);
        channels.topUp{value: 2 ether}(id);
        assertEq(channels.getChannel(id).deposit, 3 ether, "deposit");
        assertEq(channels.outstanding(), 3 ether, "outstanding");
    }

    function test_topUp_revertsForStrangersClosingAndUnknown() public {
        bytes32 id = openChannel(1 ether);
        vm.expectRevert(abi.encodeWithSelector(PaymentChannels.ChannelNotPayer.selector, id, node));
        vm.prank(node);
        channels.topUp{value: 1}(id);
        vm.expectRevert(abi.encodeWithSelector(PaymentChannels.ChannelNotFound.selector, bytes32(uint256(7))));
        vm.prank(payer);
        channels.topUp{value: 1}(bytes32(uint256(7)));
        vm.prank(payer);
        channels.startClose(id);
        vm.expectPartialRevert(PaymentChannels.ChannelExpired.selector);
        vm.prank(payer);
        channels.topUp{value: 1}(id);
    }

    // ---------------------------------------------------------------- redeem

    function test_redeem_paysPayeeAndFee() public {
        bytes32 id = openChannel(10 ether);
        uint256 nodeBefore = node.balance;
        bytes memory sig = signVoucher(PAYER_KEY, id, 2 ether);
        vm.expectEmit(true, false, false, false);
        emit PaymentChannels.Redeemed(id, 2 ether, 2 ether);
        uint256 paid = channels.redeem(id, 2 ether, sig);
        assertEq(paid, 2 ether, "returned amount");
        assertEq(node.balance - nodeBefore, 1.9 ether, "payee share");
        assertEq(address(rewards).balance, 0.1 ether, "fee");
        assertEq(channels.getChannel(id).redeemed, 2 ether, "redeemed");
        assertEq(channels.outstanding(), 8 ether, "outstanding");
        assertEq(address(channels).balance, 8 ether, "balance");
    }

    function test_redeem_subsequentVoucherPaysTheDifference() public {
        bytes32 id = openChannel(10 ether);
        channels.redeem(id, 1 ether, signVoucher(PAYER_KEY, id, 1 ether));
        uint256 before = node.balance;
        uint256 paid = channels.redeem(id, 3 ether, signVoucher(PAYER_KEY, id, 3 ether));
        assertEq(paid, 2 ether, "difference");
        assertEq(node.balance - before, 1.9 ether, "payee share of the difference");
    }

    function test_attack_replayedVoucherPaysNothing() public {
        bytes32 id = openChannel(10 ether);
        bytes memory sig = signVoucher(PAYER_KEY, id, 1 ether);
        channels.redeem(id, 1 ether, sig);
        uint256 before = node.balance;
        assertEq(channels.redeem(id, 1 ether, sig), 0, "replay pays 0");
        assertEq(node.balance, before, "no payment");
        // A lower cumulative amount pays nothing either.
        assertEq(channels.redeem(id, 0.5 ether, signVoucher(PAYER_KEY, id, 0.5 ether)), 0, "lower pays 0");
        assertEq(channels.getChannel(id).redeemed, 1 ether, "redeemed unchanged");
    }

    function test_redeem_revertsOverDeposit() public {
        bytes32 id = openChannel(1 ether);
        bytes memory sig = signVoucher(PAYER_KEY, id, 2 ether);
        vm.expectRevert(
            abi.encodeWithSelector(PaymentChannels.ChannelInsufficientDeposit.selector, id, 1 ether, 2 ether)
        );
        channels.redeem(id, 2 ether, sig);
    }

    function test_redeem_revertsAfterExpiry() public {
        bytes32 id = openChannel(1 ether);
        bytes memory sig = signVoucher(PAYER_KEY, id, 0.5 ether);
        vm.warp(block.timestamp + 30 days);
        vm.expectPartialRevert(PaymentChannels.ChannelExpired.selector);
        channels.redeem(id, 0.5 ether, sig);
    }

    function test_redeem_revertsForUnknownChannel() public {
        vm.expectRevert(abi.encodeWithSelector(PaymentChannels.ChannelNotFound.selector, bytes32(uint256(1))));
        channels.redeem(bytes32(uint256(1)), 1, "");
    }

    function test_attack_voucherForAnotherChannel() public {
        bytes32 a = openChannel(1 ether);
        bytes32 b = openChannel(1 ether);
        bytes memory sigForA = signVoucher(PAYER_KEY, a, 0.5 ether);
        vm.expectRevert(); // recovers some other address: VoucherInvalidSigner
        channels.redeem(b, 0.5 ether, sigForA);
        assertEq(channels.getChannel(b).redeemed, 0, "nothing redeemed");
    }

    function test_attack_voucherSignedByPayee() public {
        bytes32 id = openChannel(1 ether);
        bytes memory sig = signVoucher(NODE_KEY, id, 0.5 ether);
        vm.expectRevert(abi.encodeWithSelector(PaymentChannels.VoucherInvalidSigner.selector, id, node));
        channels.redeem(id, 0.5 ether, sig);
    }

    function test_attack_voucherFromAnotherChainId() public {
        bytes32 id = openChannel(1 ether);
        uint256 realChain = block.chainid;
        vm.chainId(realChain + 1);
        bytes memory sig = signVoucher(PAYER_KEY, id, 0.5 ether);
        vm.chainId(realChain);
        vm.expectRevert(); // VoucherInvalidSigner: the digest differs in its domain
        channels.redeem(id, 0.5 ether, sig);
        assertEq(channels.getChannel(id).redeemed, 0, "nothing redeemed");
    }

    function test_attack_voucherForAnotherContract() public {
        bytes32 id = openChannel(1 ether);
        PaymentChannels twin = new PaymentChannels(IValidatorRewards(address(rewards)), FEE_BPS, CHALLENGE_WINDOW);
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(PAYER_KEY, twin.voucherDigest(id, 0.5 ether));
        vm.expectRevert();
        channels.redeem(id, 0.5 ether, abi.encodePacked(r, s, v));
        assertEq(channels.getChannel(id).redeemed, 0, "nothing redeemed");
    }

    function test_attack_malleableHighS() public {
        bytes32 id = openChannel(1 ether);
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(PAYER_KEY, channels.voucherDigest(id, 0.5 ether));
        uint256 n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141;
        bytes32 highS = bytes32(n - uint256(s));
        uint8 flippedV = v == 27 ? 28 : 27;
        // A malleated signature recovers nobody: refused as signed by 0, naming the channel (settlement drops it).
        vm.expectRevert(abi.encodeWithSelector(PaymentChannels.VoucherInvalidSigner.selector, id, address(0)));
        channels.redeem(id, 0.5 ether, abi.encodePacked(r, highS, flippedV));
        // The canonical signature still works.
        assertEq(channels.redeem(id, 0.5 ether, abi.encodePacked(r, s, v)), 0.5 ether, "canonical ok");
    }

    function test_attack_reentrantPayeeIsPaidOnce() public {
        ReentrantPayee evil = new ReentrantPayee(channels);
        vm.prank(payer);
        bytes32 id = channels.open{value: 2 ether}(address(evil), uint64(block.timestamp + 1 days));
        bytes memory sig = signVoucher(PAYER_KEY, id, 1 ether);
        evil.arm(id, 1 ether, sig);
        channels.redeem(id, 1 ether, sig);
        assertTrue(evil.reentryBlocked(), "reentrant redeem was blocked by the guard");
        assertEq(evil.received(), 0.95 ether, "paid exactly once");
        assertEq(channels.getChannel(id).redeemed, 1 ether, "redeemed once");
        assertEq(address(channels).balance, 1 ether, "rest stays");
    }

    function test_redeem_rejectsGarbageSignatures() public {
        bytes32 id = openChannel(1 ether);
        vm.expectRevert(abi.encodeWithSelector(PaymentChannels.VoucherInvalidSigner.selector, id, address(0)));
        channels.redeem(id, 1, hex"010203");
    }

    // ---------------------------------------------------------------- redeemMany

    function test_redeemMany_settlesManyChannelsWithOneTransfer() public {
        PaymentChannels.SignedVoucher[] memory vs = new PaymentChannels.SignedVoucher[](3);
        for (uint256 i = 0; i < 3; ++i) {
            bytes32 id = openChannel(1 ether);
            vs[i] = batchVoucher(PAYER_KEY, id, (i + 1) * 0.1 ether);
        }
        uint256 before = node.balance;
        vm.expectEmit(true, false, false, false);
        emit PaymentChannels.BatchRedeemed(node, 3, 0.6 ether, 0.03 ether, 0);
        uint256 total = channels.redeemMany(vs);
        assertEq(total, 0.6 ether, "total");
        assertEq(node.balance - before, 0.57 ether, "payee share");
        assertEq(address(rewards).balance, 0.03 ether, "fees");
        // Resubmitting the same batch is harmless.
        assertEq(channels.redeemMany(vs), 0, "idempotent batch");
        assertEq(node.balance - before, 0.57 ether, "no double payment");
    }

    function test_redeemMany_revertsOnMixedPayeesAndEmptyBatch() public {
        bytes32 a = openChannel(1 ether);
        vm.prank(payer);
        bytes32 b = channels.open{value: 1 ether}(otherNode, uint64(block.timestamp + 1 days));
        PaymentChannels.SignedVoucher[] memory vs = new PaymentChannels.SignedVoucher[](2);
        vs[0] = batchVoucher(PAYER_KEY, a, 1);
        vs[1] = batchVoucher(PAYER_KEY, b, 1);
        vm.expectRevert(abi.encodeWithSelector(PaymentChannels.VoucherPayeeMismatch.selector, b));
        channels.redeemMany(vs);
        vm.expectRevert(PaymentChannels.VoucherEmptyBatch.selector);
        channels.redeemMany(new PaymentChannels.SignedVoucher[](0));
    }

    // ---------------------------------------------------------------- close / withdraw

    function test_close_payeeRedeemsInWindowThenPayerWithdrawsRest() public {
        bytes32 id = openChannel(5 ether);
        vm.expectEmit();
        emit PaymentChannels.ChannelClosing(id, block.timestamp + CHALLENGE_WINDOW);
        vm.prank(payer);
        channels.startClose(id);
        vm.expectPartialRevert(PaymentChannels.ChannelStillOpen.selector);
        vm.prank(payer);
        channels.withdraw(id);
        vm.warp(block.timestamp + CHALLENGE_WINDOW - 1);
        channels.redeem(id, 2 ether, signVoucher(PAYER_KEY, id, 2 ether));
        vm.warp(block.timestamp + 1);
        bytes memory late = signVoucher(PAYER_KEY, id, 3 ether);
        vm.expectPartialRevert(PaymentChannels.ChannelExpired.selector);
        channels.redeem(id, 3 ether, late);
        uint256 before = payer.balance;
        vm.expectEmit();
        emit PaymentChannels.ChannelWithdrawn(id, payer, 3 ether);
        vm.prank(payer);
        assertEq(channels.withdraw(id), 3 ether, "refund");
        assertEq(payer.balance - before, 3 ether, "payer refunded");
        assertEq(address(channels).balance, 0, "empty");
        vm.prank(payer);
        assertEq(channels.withdraw(id), 0, "second withdraw pays nothing");
    }

    function test_close_revertsForStrangersAndTwice() public {
        bytes32 id = openChannel(1 ether);
        vm.expectRevert(abi.encodeWithSelector(PaymentChannels.ChannelNotPayer.selector, id, node));
        vm.prank(node);
        channels.startClose(id);
        vm.prank(payer);
        channels.startClose(id);
        vm.expectRevert(abi.encodeWithSelector(PaymentChannels.ChannelAlreadyClosing.selector, id));
        vm.prank(payer);
        channels.startClose(id);
        vm.warp(block.timestamp + 2 days);
        vm.expectRevert(abi.encodeWithSelector(PaymentChannels.ChannelNotPayer.selector, id, node));
        vm.prank(node);
        channels.withdraw(id);
    }

    function test_close_revertsAfterExpiry() public {
        bytes32 id = openChannel(1 ether);
        vm.warp(block.timestamp + 31 days);
        vm.expectPartialRevert(PaymentChannels.ChannelExpired.selector);
        vm.prank(payer);
        channels.startClose(id);
        vm.prank(payer);
        assertEq(channels.withdraw(id), 1 ether, "expired channel refunds without closing");
    }

    // ---------------------------------------------------------------- fuzz

    /// Any order of vouchers pays exactly the highest cumulative amount (capped by the deposit), never more.
    function testFuzz_redeemOrderingPaysTheMaximum(uint256[6] memory amounts, uint256 depositSeed) public {
        uint256 deposit = bound(depositSeed, 1, 100 ether);
        bytes32 id = openChannel(deposit);
        uint256 highest;
        uint256 paidTotal;
        for (uint256 i = 0; i < amounts.length; ++i) {
            uint256 c = bound(amounts[i], 1, deposit);
            paidTotal += channels.redeem(id, c, signVoucher(PAYER_KEY, id, c));
            if (c > highest) highest = c;
        }
        assertEq(paidTotal, highest, "paid = highest voucher");
        assertEq(channels.getChannel(id).redeemed, highest, "redeemed = highest voucher");
        assertEq(address(channels).balance, deposit - highest, "rest stays");
        assertEq(address(channels).balance, channels.outstanding(), "balance = outstanding");
    }

    function testFuzz_feeSplitIsExact(uint256 amountSeed) public {
        uint256 amount = bound(amountSeed, 1, 1000 ether);
        vm.deal(payer, amount);
        bytes32 id = openChannel(amount);
        uint256 before = node.balance;
        channels.redeem(id, amount, signVoucher(PAYER_KEY, id, amount));
        uint256 fee = amount * FEE_BPS / 10_000;
        assertEq(address(rewards).balance, fee, "fee");
        assertEq(node.balance - before, amount - fee, "payee");
    }

    function testFuzz_foreignSignerNeverRedeems(uint256 keySeed, uint256 amountSeed) public {
        uint256 key = bound(keySeed, 1, 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364140);
        vm.assume(key != PAYER_KEY);
        bytes32 id = openChannel(1 ether);
        uint256 amount = bound(amountSeed, 1, 1 ether);
        bytes memory sig = signVoucher(key, id, amount);
        vm.expectRevert(abi.encodeWithSelector(PaymentChannels.VoucherInvalidSigner.selector, id, vm.addr(key)));
        channels.redeem(id, amount, sig);
    }

    function testFuzz_randomSignatureBytesNeverRedeem(bytes32 r, bytes32 s, uint8 v) public {
        bytes32 id = openChannel(1 ether);
        vm.expectRevert();
        channels.redeem(id, 1, abi.encodePacked(r, s, v));
    }
}
