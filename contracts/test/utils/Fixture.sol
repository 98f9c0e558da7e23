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
    uint256 internal constant BOND_BPS = 1000; // 10% of the slash sought
    uint256 internal constant AUDIT_WINDOW = 1 days;
    uint256 internal constant REVEAL_WINDOW = 1 hours;
    uint256 internal constant VOTING_PERIOD = 3 days;
    uint256 internal constant QUORUM_BPS = 5000; // more than half of the validator stake
    uint256 internal constant SLASH_BPS = 5000; // 50%
    uint256 internal constant CHALLENGER_BPS = 2000; // of the slash
    uint256 internal constant BURN_BPS = 3000; // of the slash
    uint256 internal constant MIN_STAKE_AGE_BLOCKS = 100;

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

    function disputeParams() internal pure returns (Disputes.Params memory) {
        return Disputes.Params({
            minBond: MIN_BOND,
            bondBps: BOND_BPS,
            auditWindow: AUDIT_WINDOW,
            revealWindow: REVEAL_WINDOW,
            votingPeriod: VOTING_PERIOD,
            quorumBps: QUORUM_BPS,
            slashBps: SLASH_BPS,
            challengerBps: CHALLENGER_BPS,
            burnBps: BURN_BPS,
            minStakeAgeBlocks: MIN_STAKE_AGE_BLOCKS
        });
    }

    function deploySystem() internal {
        vm.roll(10);
        staking = new Staking(MIN_NODE_STAKE, MIN_VALIDATOR_STAKE, UNBONDING_DELAY);
        rewards = new ValidatorRewards(IStaking(address(staking)), EPOCH_LENGTH);
        channels = new PaymentChannels(IValidatorRewards(address(rewards)), FEE_BPS, CHALLENGE_WINDOW);
        disputes = new Disputes(IStaking(address(staking)), address(channels), disputeParams());
        staking.setModules(address(disputes), address(rewards));

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

    /// @dev Move one block (12 s) forward: what separates a commitment from its reveal, or a stake change from the
    ///      checkpoint it lands in.
    function nextBlock() internal {
        vm.roll(block.number + 1);
        vm.warp(block.timestamp + 12);
    }

    /// @dev Let stake registered so far reach the age at which it votes.
    function ageStake() internal {
        vm.roll(block.number + MIN_STAKE_AGE_BLOCKS + 1);
        vm.warp(block.timestamp + 12 * (MIN_STAKE_AGE_BLOCKS + 1));
    }

    function signVoucher(uint256 key, bytes32 channelId, uint256 cumulative) internal view returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, channels.voucherDigest(channelId, cumulative));
        return abi.encodePacked(r, s, v);
    }

    /// A voucher for `redeemMany`: the signature in the compact (EIP-2098) form.
    function batchVoucher(uint256 key, bytes32 channelId, uint256 cumulative)
        internal
        view
        returns (PaymentChannels.SignedVoucher memory)
    {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, channels.voucherDigest(channelId, cumulative));
        return PaymentChannels.SignedVoucher(channelId, cumulative, r, compactVs(v, s));
    }

    function compactVs(uint8 v, bytes32 s) internal pure returns (bytes32) {
        return bytes32(uint256(s) | (uint256(v - 27) << 255));
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
            inputHash: keccak256(abi.encode("input", jobId)),
            outputHash: outputHash,
            units: 1,
            price: 1e13,
            channelId: keccak256("channel"),
            issuedAt: uint64(block.timestamp)
        });
    }

    function signBatch(uint256 key, Disputes.ReceiptBatch memory batch) internal view returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, disputes.batchDigest(batch));
        return abi.encodePacked(r, s, v);
    }

    /// @dev Evidence for a receipt signed alone (a batch of one: root = leaf, empty proof).
    function evidenceOf(uint256 key, Disputes.Receipt memory r) internal view returns (Disputes.Evidence memory ev) {
        Disputes.Receipt[] memory rs = new Disputes.Receipt[](1);
        rs[0] = r;
        return evidenceInBatch(key, rs, 0);
    }

    /// @dev Evidence for receipt `index` of a batch the node with `key` signed over all of `rs`.
    function evidenceInBatch(uint256 key, Disputes.Receipt[] memory rs, uint256 index)
        internal
        view
        returns (Disputes.Evidence memory ev)
    {
        bytes32[] memory leaves = new bytes32[](rs.length);
        for (uint256 i = 0; i < rs.length; ++i) {
            leaves[i] = disputes.receiptLeaf(rs[i]);
        }
        (bytes32 root, bytes32[] memory proof) = merkleProof(leaves, index);
        ev.receipt = rs[index];
        ev.proof = proof;
        ev.batch = Disputes.ReceiptBatch({
            root: root, node: vm.addr(key), count: rs.length, issuedAt: uint64(block.timestamp)
        });
        ev.batchSignature = signBatch(key, ev.batch);
    }

    /// @dev The tree the node builds (sdk::receipt): sorted-pair keccak, an odd last node moves up unchanged.
    function merkleProof(bytes32[] memory leaves, uint256 index)
        internal
        pure
        returns (bytes32 root, bytes32[] memory proof)
    {
        bytes32[] memory level = leaves;
        bytes32[] memory path = new bytes32[](64);
        uint256 depth;
        while (level.length > 1) {
            uint256 sibling = index ^ 1;
            if (sibling < level.length) path[depth++] = level[sibling];
            bytes32[] memory next = new bytes32[]((level.length + 1) / 2);
            for (uint256 i = 0; i < level.length; i += 2) {
                next[i / 2] = i + 1 < level.length ? hashPair(level[i], level[i + 1]) : level[i];
            }
            level = next;
            index /= 2;
        }
        proof = new bytes32[](depth);
        for (uint256 i = 0; i < depth; ++i) {
            proof[i] = path[i];
        }
        root = level[0];
    }

    function hashPair(bytes32 a, bytes32 b) internal pure returns (bytes32) {
        return a < b ? keccak256(abi.encode(a, b)) : keccak256(abi.encode(b, a));
    }

    /// @dev `Disputes.commitmentOf`, computed here so that a `prank` before `commit` applies to `commit` itself.
    function commitment(address who, address nodeAddr, bytes32 leaf, bytes32 out, bytes32 salt)
        internal
        pure
        returns (bytes32)
    {
        return keccak256(abi.encode(who, nodeAddr, leaf, out, salt));
    }

    /// @dev Commit, move to the next block, reveal with `bond`; returns the dispute id.
    function commitAndChallenge(address who, Disputes.Evidence memory ev, bytes32 ourOut, uint256 bond)
        internal
        returns (uint256 id)
    {
        bytes32 salt = keccak256(abi.encode(who, ev.receipt.jobId));
        bytes32 leaf = disputes.receiptLeaf(ev.receipt);
        vm.prank(who);
        disputes.commit(commitment(who, ev.batch.node, leaf, ourOut, salt));
        nextBlock();
        vm.prank(who);
        id = disputes.challenge{value: bond}(ev, ourOut, salt);
    }
}
