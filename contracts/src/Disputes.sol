// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {IStaking} from "./interfaces/IStaking.sol";

/// @title Disputes
/// @notice A staked validator that re-executed a job and got a different result challenges the node with the node's
///         own EIP-712 receipt (verified here: it must be signed by the node's registered operator), its output hash
///         and a bond. Validators vote, weighted by stake, until the voting period ends. A strict majority against the
///         node slashes `SLASH_BPS` of the node's stake: the challenger gets its bond back plus `CHALLENGER_BPS` of
///         the slash, and the voters who voted against the node share the rest. Otherwise the challenger's bond goes
///         to the voters who sided with the node. One dispute per receipt.
/// @dev Receipts use the PaymentChannels EIP-712 domain (name "MLBridge", version "1", chain id, PaymentChannels),
///      so a node signs every receipt in one domain. Payouts are pulled (`claimVoteReward`, `withdraw`) so that no
///      recipient can block a resolution. Pro-rata division leaves at most (voters - 1) wei of dust per dispute.
contract Disputes is ReentrancyGuardTransient {
    /// @notice EIP-712 type hash of a receipt.
    bytes32 public constant RECEIPT_TYPEHASH = keccak256(
        "Receipt(bytes32 jobId,bytes32 modelId,bytes32 inputHash,bytes32 outputHash,uint256 price,address node)"
    );
    bytes32 private constant _DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    uint256 private constant BPS = 10_000;

    /// @notice The staking contract (validators, nodes, slashing).
    IStaking public immutable STAKING;
    /// @notice The contract whose EIP-712 domain receipts are signed in.
    address public immutable RECEIPT_DOMAIN_CONTRACT;
    /// @notice Smallest bond a challenger must post, in wei.
    uint256 public immutable MIN_BOND;
    /// @notice Seconds validators have to vote.
    uint256 public immutable VOTING_PERIOD;
    /// @notice Share of the node's active stake slashed on a lost dispute, in basis points.
    uint256 public immutable SLASH_BPS;
    /// @notice Share of the slash paid to the challenger, in basis points.
    uint256 public immutable CHALLENGER_BPS;

    /// @notice A node-signed receipt: the evidence of what the node claims it computed.
    struct Receipt {
        bytes32 jobId;
        bytes32 modelId;
        bytes32 inputHash;
        bytes32 outputHash;
        uint256 price;
        address node;
    }

    /// @notice Outcome of a dispute.
    enum Outcome {
        Pending,
        NodeSlashed,
        ChallengerLost
    }

    /// @notice One dispute.
    struct Dispute {
        address node;
        uint64 deadline;
        Outcome outcome;
        address challenger;
        bytes32 receiptDigest;
        bytes32 challengerOutputHash;
        uint256 bond;
        uint256 votesNodeWrong;
        uint256 votesNodeRight;
        uint256 slashed;
        uint256 voterPool;
    }

    struct Vote {
        uint128 weight;
        bool nodeWrong;
        bool claimed;
    }

    Dispute[] private _disputes;
    mapping(bytes32 => uint256) private _byReceiptPlusOne;
    mapping(uint256 => mapping(address => Vote)) private _votes;
    mapping(address => uint256) private _credits;
    /// @dev Bonds of open disputes + credits + unclaimed voter pools: what this contract owes.
    uint256 private _owed;

    /// @notice A validator opened a dispute.
    /// @param disputeId The dispute.
    /// @param node The accused node operator.
    /// @param challenger The validator.
    /// @param receiptDigest EIP-712 digest of the receipt.
    /// @param jobId The job.
    /// @param modelId The model that ran.
    /// @param nodeOutputHash What the node claims it output.
    /// @param challengerOutputHash What the validator got.
    /// @param bond The challenger's bond.
    /// @param deadline End of voting (unix seconds).
    event DisputeOpened(
        uint256 indexed disputeId,
        address indexed node,
        address indexed challenger,
        bytes32 receiptDigest,
        bytes32 jobId,
        bytes32 modelId,
        bytes32 nodeOutputHash,
        bytes32 challengerOutputHash,
        uint256 bond,
        uint256 deadline
    );
    /// @notice A validator voted.
    /// @param disputeId The dispute.
    /// @param validator The voter.
    /// @param nodeWrong True if it sides with the challenger.
    /// @param weight Its stake at voting time.
    event Voted(uint256 indexed disputeId, address indexed validator, bool nodeWrong, uint256 weight);
    /// @notice A dispute was resolved.
    /// @param disputeId The dispute.
    /// @param outcome NodeSlashed or ChallengerLost.
    /// @param slashed Amount slashed from the node (0 if the challenger lost).
    /// @param voterPool Amount shared among the winning side's voters.
    event DisputeResolved(uint256 indexed disputeId, Outcome outcome, uint256 slashed, uint256 voterPool);
    /// @notice A voter claimed its share of a dispute's pool.
    /// @param disputeId The dispute.
    /// @param voter The voter.
    /// @param amount The amount sent.
    event VoteRewardClaimed(uint256 indexed disputeId, address indexed voter, uint256 amount);
    /// @notice Credited funds (challenger bond and reward) were withdrawn.
    /// @param account The recipient.
    /// @param amount The amount sent.
    event CreditWithdrawn(address indexed account, uint256 amount);

    /// @notice Only active validators may challenge or vote.
    /// @param account The caller.
    error DisputeNotValidator(address account);
    /// @notice The bond is below `MIN_BOND`.
    /// @param given The bond attached.
    /// @param minimum The minimum.
    error DisputeBondTooSmall(uint256 given, uint256 minimum);
    /// @notice The receipt is not signed by the node it names.
    /// @param signer Who signed it.
    /// @param node The node named in the receipt.
    error DisputeInvalidReceiptSignature(address signer, address node);
    /// @notice The receipt's node is not a registered node.
    /// @param node The address.
    error DisputeNotANode(address node);
    /// @notice The challenger's output equals the node's: nothing to dispute.
    error DisputeSameOutput();
    /// @notice This receipt is already disputed.
    /// @param receiptDigest The receipt.
    /// @param disputeId The existing dispute.
    error DisputeAlreadyExists(bytes32 receiptDigest, uint256 disputeId);
    /// @notice No dispute with this id.
    /// @param disputeId The id.
    error DisputeNotFound(uint256 disputeId);
    /// @notice Voting has ended.
    /// @param disputeId The dispute.
    /// @param deadline When it ended.
    error DisputeVotingClosed(uint256 disputeId, uint256 deadline);
    /// @notice Voting has not ended yet.
    /// @param disputeId The dispute.
    /// @param deadline When it ends.
    error DisputeVotingOpen(uint256 disputeId, uint256 deadline);
    /// @notice The validator already voted.
    /// @param disputeId The dispute.
    /// @param validator The validator.
    error DisputeAlreadyVoted(uint256 disputeId, address validator);
    /// @notice The dispute is already resolved.
    /// @param disputeId The dispute.
    error DisputeAlreadyResolved(uint256 disputeId);
    /// @notice Nothing to claim or withdraw.
    /// @param account The caller.
    error DisputeNothingToClaim(address account);
    /// @notice Invalid constructor arguments.
    error DisputeInvalidParams();
    /// @notice ETH may only arrive as a bond or from slashing.
    /// @param from The sender.
    error DisputeUnexpectedPayment(address from);
    /// @notice Sending ETH failed.
    /// @param to The recipient.
    /// @param amount The amount.
    error DisputeTransferFailed(address to, uint256 amount);

    /// @param staking The Staking contract.
    /// @param receiptDomainContract The PaymentChannels contract (the receipts' EIP-712 verifying contract).
    /// @param minBond Smallest challenger bond in wei.
    /// @param votingPeriod Seconds of voting.
    /// @param slashBps Share of the node's stake slashed, in basis points.
    /// @param challengerBps Share of the slash paid to the challenger, in basis points.
    constructor(
        IStaking staking,
        address receiptDomainContract,
        uint256 minBond,
        uint256 votingPeriod,
        uint256 slashBps,
        uint256 challengerBps
    ) {
        if (
            address(staking) == address(0) || receiptDomainContract == address(0) || slashBps > BPS
                || challengerBps > BPS
        ) {
            revert DisputeInvalidParams();
        }
        STAKING = staking;
        RECEIPT_DOMAIN_CONTRACT = receiptDomainContract;
        MIN_BOND = minBond;
        VOTING_PERIOD = votingPeriod;
        SLASH_BPS = slashBps;
        CHALLENGER_BPS = challengerBps;
    }

    /// @notice Accepts ETH only from Staking (slashed stake).
    receive() external payable {
        if (msg.sender != address(STAKING)) revert DisputeUnexpectedPayment(msg.sender);
    }

    /// @notice Challenge a node's receipt with a bond. The caller's vote against the node is counted at once.
    /// @param receipt The node's receipt.
    /// @param nodeSignature The node operator's 65-byte EIP-712 signature of the receipt.
    /// @param challengerOutputHash The hash of the output the challenger computed.
    /// @return disputeId The new dispute.
    function challenge(Receipt calldata receipt, bytes calldata nodeSignature, bytes32 challengerOutputHash)
        external
        payable
        returns (uint256 disputeId)
    {
        bytes32 digest = _checkChallenge(receipt, nodeSignature, challengerOutputHash);
        disputeId = _disputes.length;
        uint256 deadline = block.timestamp + VOTING_PERIOD;
        uint256 weight = STAKING.stakeOf(msg.sender);
        Dispute storage d = _disputes.push();
        d.node = receipt.node;
        d.deadline = uint64(deadline);
        d.challenger = msg.sender;
        d.receiptDigest = digest;
        d.challengerOutputHash = challengerOutputHash;
        d.bond = msg.value;
        d.votesNodeWrong = weight;
        _byReceiptPlusOne[digest] = disputeId + 1;
        _votes[disputeId][msg.sender] = Vote({weight: uint128(weight), nodeWrong: true, claimed: false});
        _owed += msg.value;
        _emitOpened(disputeId, receipt, digest, challengerOutputHash, deadline);
        emit Voted(disputeId, msg.sender, true, weight);
    }

    /// @notice Vote on an open dispute with the caller's current stake as weight.
    /// @param disputeId The dispute.
    /// @param nodeWrong True to side with the challenger, false to side with the node.
    function vote(uint256 disputeId, bool nodeWrong) external {
        Dispute storage d = _existing(disputeId);
        if (block.timestamp >= d.deadline) revert DisputeVotingClosed(disputeId, d.deadline);
        if (!STAKING.isActiveValidator(msg.sender)) revert DisputeNotValidator(msg.sender);
        if (_votes[disputeId][msg.sender].weight != 0) revert DisputeAlreadyVoted(disputeId, msg.sender);
        uint256 weight = STAKING.stakeOf(msg.sender);
        _votes[disputeId][msg.sender] = Vote({weight: uint128(weight), nodeWrong: nodeWrong, claimed: false});
        if (nodeWrong) d.votesNodeWrong += weight;
        else d.votesNodeRight += weight;
        emit Voted(disputeId, msg.sender, nodeWrong, weight);
    }

    /// @notice Resolve a dispute after its voting period. Anyone may call.
    /// @param disputeId The dispute.
    function resolve(uint256 disputeId) external nonReentrant {
        Dispute storage d = _existing(disputeId);
        if (d.outcome != Outcome.Pending) revert DisputeAlreadyResolved(disputeId);
        if (block.timestamp < d.deadline) revert DisputeVotingOpen(disputeId, d.deadline);
        if (d.votesNodeWrong > d.votesNodeRight) {
            d.outcome = Outcome.NodeSlashed;
            uint256 target = STAKING.stakeOf(d.node) * SLASH_BPS / BPS;
            // Interaction with our own trusted Staking; it sends the slashed ETH back to receive().
            uint256 slashed = target == 0 ? 0 : STAKING.slash(d.node, target);
            uint256 challengerReward = slashed * CHALLENGER_BPS / BPS;
            d.slashed = slashed;
            d.voterPool = slashed - challengerReward;
            _credits[d.challenger] += d.bond + challengerReward;
            _owed += slashed;
        } else {
            d.outcome = Outcome.ChallengerLost;
            d.voterPool = d.bond;
        }
        emit DisputeResolved(disputeId, d.outcome, d.slashed, d.voterPool);
    }

    /// @notice Claim the caller's share of a resolved dispute's voter pool (winning side only).
    /// @param disputeId The dispute.
    /// @return amount The amount sent.
    function claimVoteReward(uint256 disputeId) external nonReentrant returns (uint256 amount) {
        Dispute storage d = _existing(disputeId);
        Vote storage v = _votes[disputeId][msg.sender];
        bool won = d.outcome == Outcome.NodeSlashed ? v.nodeWrong : !v.nodeWrong;
        if (d.outcome == Outcome.Pending || v.weight == 0 || v.claimed || !won) {
            revert DisputeNothingToClaim(msg.sender);
        }
        v.claimed = true;
        uint256 winningWeight = d.outcome == Outcome.NodeSlashed ? d.votesNodeWrong : d.votesNodeRight;
        amount = d.voterPool * v.weight / winningWeight;
        _owed -= amount;
        emit VoteRewardClaimed(disputeId, msg.sender, amount);
        if (amount > 0) _send(msg.sender, amount);
    }

    /// @notice Withdraw credited funds (a winning challenger's bond and reward).
    /// @return amount The amount sent.
    function withdraw() external nonReentrant returns (uint256 amount) {
        amount = _credits[msg.sender];
        if (amount == 0) revert DisputeNothingToClaim(msg.sender);
        _credits[msg.sender] = 0;
        _owed -= amount;
        emit CreditWithdrawn(msg.sender, amount);
        _send(msg.sender, amount);
    }

    /// @notice The EIP-712 digest of a receipt, in the PaymentChannels domain.
    /// @param receipt The receipt.
    /// @return The digest the node signs.
    function receiptDigest(Receipt calldata receipt) public view returns (bytes32) {
        bytes32 structHash = keccak256(
            abi.encode(
                RECEIPT_TYPEHASH,
                receipt.jobId,
                receipt.modelId,
                receipt.inputHash,
                receipt.outputHash,
                receipt.price,
                receipt.node
            )
        );
        return keccak256(abi.encodePacked("\x19\x01", receiptDomainSeparator(), structHash));
    }

    /// @notice The receipts' EIP-712 domain separator.
    /// @return The separator.
    function receiptDomainSeparator() public view returns (bytes32) {
        return keccak256(
            abi.encode(_DOMAIN_TYPEHASH, keccak256("MLBridge"), keccak256("1"), block.chainid, RECEIPT_DOMAIN_CONTRACT)
        );
    }

    /// @notice A dispute's state.
    /// @param disputeId The dispute.
    /// @return The dispute.
    function getDispute(uint256 disputeId) external view returns (Dispute memory) {
        return _existing(disputeId);
    }

    /// @notice A validator's vote on a dispute.
    /// @param disputeId The dispute.
    /// @param validator The validator.
    /// @return weight Its weight (0 if it did not vote).
    /// @return nodeWrong Its side.
    /// @return claimed Whether it claimed its reward.
    function voteOf(uint256 disputeId, address validator)
        external
        view
        returns (uint256 weight, bool nodeWrong, bool claimed)
    {
        Vote storage v = _votes[disputeId][validator];
        return (v.weight, v.nodeWrong, v.claimed);
    }

    /// @notice Number of disputes ever opened.
    /// @return The count.
    function disputeCount() external view returns (uint256) {
        return _disputes.length;
    }

    /// @notice Credited funds of `account`, withdrawable now.
    /// @param account The account.
    /// @return The amount.
    function creditOf(address account) external view returns (uint256) {
        return _credits[account];
    }

    /// @notice Everything this contract owes (open bonds, credits, unclaimed voter pools).
    /// @return The amount in wei.
    function owed() external view returns (uint256) {
        return _owed;
    }

    /// @dev All checks of `challenge`; returns the receipt digest.
    function _checkChallenge(Receipt calldata receipt, bytes calldata nodeSignature, bytes32 challengerOutputHash)
        private
        view
        returns (bytes32 digest)
    {
        if (!STAKING.isActiveValidator(msg.sender)) revert DisputeNotValidator(msg.sender);
        if (msg.value < MIN_BOND || msg.value == 0) revert DisputeBondTooSmall(msg.value, MIN_BOND);
        digest = receiptDigest(receipt);
        address signer = ECDSA.recoverCalldata(digest, nodeSignature);
        if (signer != receipt.node) revert DisputeInvalidReceiptSignature(signer, receipt.node);
        if (STAKING.roleOf(receipt.node) != IStaking.Role.Node) revert DisputeNotANode(receipt.node);
        if (challengerOutputHash == receipt.outputHash) revert DisputeSameOutput();
        uint256 existing = _byReceiptPlusOne[digest];
        if (existing != 0) revert DisputeAlreadyExists(digest, existing - 1);
    }

    function _emitOpened(
        uint256 disputeId,
        Receipt calldata receipt,
        bytes32 digest,
        bytes32 challengerOutputHash,
        uint256 deadline
    ) private {
        emit DisputeOpened(
            disputeId,
            receipt.node,
            msg.sender,
            digest,
            receipt.jobId,
            receipt.modelId,
            receipt.outputHash,
            challengerOutputHash,
            msg.value,
            deadline
        );
    }

    function _existing(uint256 disputeId) private view returns (Dispute storage) {
        if (disputeId >= _disputes.length) revert DisputeNotFound(disputeId);
        return _disputes[disputeId];
    }

    function _send(address to, uint256 amount) private {
        (bool ok,) = to.call{value: amount}("");
        if (!ok) revert DisputeTransferFailed(to, amount);
    }
}
