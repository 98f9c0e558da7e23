// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {IStaking} from "./interfaces/IStaking.sol";
import {IDisputes} from "./interfaces/IDisputes.sol";

/// @title Disputes
/// @notice A staked validator that re-executed a job and got a different result challenges the node in two steps:
///         `commit` a hash of the evidence and of itself, then, in a later block and within `REVEAL_WINDOW`,
///         `challenge` with the evidence: the node's receipt (a Merkle leaf), its proof, the node-signed receipt
///         batch, its own output hash and a bond that scales with the slash it seeks. Receipts older than
///         `AUDIT_WINDOW` cannot be challenged. Validators vote with their stake as checkpointed at the block before
///         the challenge (stake added later does not count); the node is slashed only if more than `QUORUM_BPS` of
///         the total validator stake at that block voted against it. The losing side pays: a slashed node loses
///         `SLASH_BPS` of its bonded stake (active + unbonding) as it stood at the challenge, of which `BURN_BPS` is
///         burned, `CHALLENGER_BPS` goes to the challenger (with its bond back) and the rest to the voters against
///         the node; a failed challenger's bond goes to the voters who sided with the node, or to the node if none
///         did. The accused node cannot withdraw stake while the dispute is open, nor can a voter until the vote ends.
/// @dev Receipts follow ../shared/DESIGN.md §3: each leaf is the EIP-712 struct hash of a `Receipt`, leaves form an
///      OpenZeppelin-`MerkleProof` tree (sorted pairs), and the node signs `ReceiptBatch{root, node, count,
///      issuedAt}` in the PaymentChannels EIP-712 domain (name "MLBridge", version "1", chain id, PaymentChannels).
///      Payouts are pulled (`claimVoteReward`, `withdraw`) so no recipient can block a resolution. Pro-rata division
///      leaves at most (voters - 1) wei of dust per dispute.
contract Disputes is IDisputes, ReentrancyGuardTransient {
    /// @notice EIP-712 type hash of a receipt (a Merkle leaf is its struct hash).
    bytes32 public constant RECEIPT_TYPEHASH = keccak256(
        "Receipt(bytes32 jobId,bytes32 modelId,bytes32 inputHash,bytes32 outputHash,uint256 units,uint256 price,"
        "bytes32 channelId,uint64 issuedAt)"
    );
    /// @notice EIP-712 type hash of a receipt batch (what the node signs).
    bytes32 public constant BATCH_TYPEHASH =
        keccak256("ReceiptBatch(bytes32 root,address node,uint256 count,uint64 issuedAt)");
    /// @notice Where the burned part of a slash goes.
    address public constant BURN_ADDRESS = address(0xdEaD);
    bytes32 private constant _DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    uint256 private constant BPS = 10_000;

    /// @notice The staking contract (validators, nodes, checkpointed stake, slashing).
    IStaking public immutable STAKING;
    /// @notice The contract whose EIP-712 domain receipts are signed in.
    address public immutable RECEIPT_DOMAIN_CONTRACT;
    /// @notice Smallest bond a challenger must post, in wei.
    uint256 public immutable MIN_BOND;
    /// @notice Bond as a share of the slash sought, in basis points (the bond is at least `MIN_BOND`).
    uint256 public immutable BOND_BPS;
    /// @notice Seconds after a receipt's `issuedAt` during which it can be challenged.
    uint256 public immutable AUDIT_WINDOW;
    /// @notice Seconds after a commitment during which it can be revealed.
    uint256 public immutable REVEAL_WINDOW;
    /// @notice Seconds validators have to vote.
    uint256 public immutable VOTING_PERIOD;
    /// @notice Share of the total validator stake that must vote against the node to slash it (strictly more).
    uint256 public immutable QUORUM_BPS;
    /// @notice Share of the node's bonded stake slashed on a lost dispute, in basis points.
    uint256 public immutable SLASH_BPS;
    /// @notice Share of the slash paid to the challenger, in basis points.
    uint256 public immutable CHALLENGER_BPS;
    /// @notice Share of the slash burned, in basis points.
    uint256 public immutable BURN_BPS;
    /// @notice Blocks a validator's stake must have been bonded to weigh in a vote.
    uint256 public immutable MIN_STAKE_AGE_BLOCKS;

    /// @notice Deployment parameters (see the immutables of the same names).
    struct Params {
        uint256 minBond;
        uint256 bondBps;
        uint256 auditWindow;
        uint256 revealWindow;
        uint256 votingPeriod;
        uint256 quorumBps;
        uint256 slashBps;
        uint256 challengerBps;
        uint256 burnBps;
        uint256 minStakeAgeBlocks;
    }

    /// @notice One answered job as the node committed to it: a leaf of a signed batch.
    struct Receipt {
        bytes32 jobId;
        bytes32 modelId;
        bytes32 inputHash;
        bytes32 outputHash;
        uint256 units;
        uint256 price;
        bytes32 channelId;
        uint64 issuedAt;
    }

    /// @notice What the node signs once per batch of answered jobs.
    struct ReceiptBatch {
        bytes32 root;
        address node;
        uint256 count;
        uint64 issuedAt;
    }

    /// @notice A challenge's evidence: the receipt, its Merkle proof, the batch and the node's batch signature.
    struct Evidence {
        Receipt receipt;
        bytes32[] proof;
        ReceiptBatch batch;
        bytes batchSignature;
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
        uint64 snapshotBlock;
        bytes32 receiptLeaf;
        bytes32 challengerOutputHash;
        uint256 bond;
        uint256 slashTarget;
        uint256 totalStake;
        uint256 votesNodeWrong;
        uint256 votesNodeRight;
        uint256 slashed;
        uint256 voterPool;
        uint256 burned;
    }

    struct Vote {
        uint128 weight;
        bool nodeWrong;
        bool claimed;
    }

    struct Commitment {
        uint64 blockNumber;
        uint64 timestamp;
    }

    Dispute[] private _disputes;
    mapping(bytes32 => Commitment) private _commitments;
    /// @dev keccak256(node, leaf, challenger) => dispute id + 1.
    mapping(bytes32 => uint256) private _byReceiptPlusOne;
    /// @dev keccak256(node, leaf) => the receipt already cost its node a slash.
    mapping(bytes32 => bool) private _receiptSlashed;
    mapping(uint256 => mapping(address => Vote)) private _votes;
    mapping(address => uint256) private _credits;
    mapping(address => uint256) private _openAgainst;
    mapping(address => uint256) private _votingLockedUntil;
    /// @dev Bonds of open disputes + credits + unclaimed voter pools: what this contract owes.
    uint256 private _owed;

    /// @notice A challenger committed to evidence it will reveal.
    /// @param commitment keccak256(abi.encode(challenger, node, receiptLeaf, challengerOutputHash, salt)).
    /// @param revealBy Last second at which it can be revealed.
    event Committed(bytes32 indexed commitment, uint256 revealBy);
    /// @notice A validator opened a dispute.
    /// @param disputeId The dispute.
    /// @param node The accused node operator.
    /// @param challenger The validator.
    /// @param receipt The challenged receipt.
    /// @param receiptLeaf Its Merkle leaf (EIP-712 struct hash).
    /// @param challengerOutputHash What the validator got.
    /// @param bond The challenger's bond.
    /// @param slashTarget What the node loses if the challenge wins.
    /// @param deadline End of voting (unix seconds).
    event DisputeOpened(
        uint256 indexed disputeId,
        address indexed node,
        address indexed challenger,
        Receipt receipt,
        bytes32 receiptLeaf,
        bytes32 challengerOutputHash,
        uint256 bond,
        uint256 slashTarget,
        uint256 deadline
    );
    /// @notice A validator voted.
    /// @param disputeId The dispute.
    /// @param validator The voter.
    /// @param nodeWrong True if it sides with the challenger.
    /// @param weight Its stake at the block before the challenge.
    event Voted(uint256 indexed disputeId, address indexed validator, bool nodeWrong, uint256 weight);
    /// @notice A dispute was resolved.
    /// @param disputeId The dispute.
    /// @param outcome NodeSlashed or ChallengerLost.
    /// @param slashed Amount slashed from the node (0 if the challenger lost).
    /// @param voterPool Amount shared among the winning side's voters.
    /// @param burned Amount of the slash burned.
    event DisputeResolved(
        uint256 indexed disputeId, Outcome outcome, uint256 slashed, uint256 voterPool, uint256 burned
    );
    /// @notice A voter claimed its share of a dispute's pool.
    /// @param disputeId The dispute.
    /// @param voter The voter.
    /// @param amount The amount sent.
    event VoteRewardClaimed(uint256 indexed disputeId, address indexed voter, uint256 amount);
    /// @notice Funds were credited (a winning challenger's bond and reward, or a failed bond for the node).
    /// @param disputeId The dispute.
    /// @param account The account credited.
    /// @param amount The amount.
    event Credited(uint256 indexed disputeId, address indexed account, uint256 amount);
    /// @notice Credited funds were withdrawn.
    /// @param account The recipient.
    /// @param amount The amount sent.
    event CreditWithdrawn(address indexed account, uint256 amount);

    /// @notice Only validators with stake before the challenge may challenge or vote.
    /// @param account The caller.
    error DisputeNotValidator(address account);
    /// @notice The bond is below what this challenge needs.
    /// @param given The bond attached.
    /// @param required The minimum for this node's stake.
    error DisputeBondTooSmall(uint256 given, uint256 required);
    /// @notice No commitment for this evidence by this challenger, or it is from this block.
    error DisputeNotCommitted();
    /// @notice The commitment's reveal window has passed; commit again.
    /// @param revealBy When it ended.
    error DisputeCommitmentExpired(uint256 revealBy);
    /// @notice This commitment exists already.
    error DisputeAlreadyCommitted();
    /// @notice The receipt is older than the audit window.
    /// @param issuedAt The receipt's time.
    /// @param challengeableUntil When it stopped being challengeable.
    error DisputeReceiptTooOld(uint256 issuedAt, uint256 challengeableUntil);
    /// @notice The proof does not lead from the receipt to the batch root.
    error DisputeInvalidProof();
    /// @notice The batch is not signed by the node it names.
    /// @param signer Who signed it.
    /// @param node The node named in the batch.
    error DisputeInvalidReceiptSignature(address signer, address node);
    /// @notice The batch's node is not a registered node.
    /// @param node The address.
    error DisputeNotANode(address node);
    /// @notice The challenger's output equals the node's: nothing to dispute.
    error DisputeSameOutput();
    /// @notice This challenger already disputed this receipt.
    /// @param receiptLeaf The receipt.
    /// @param disputeId The existing dispute.
    error DisputeAlreadyExists(bytes32 receiptLeaf, uint256 disputeId);
    /// @notice The node has no stake a dispute could slash.
    /// @param node The node.
    error DisputeNothingToSlash(address node);
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
    /// @notice Staking's unbonding delay must be longer than audit + reveal + voting windows.
    /// @param unbondingDelay Staking's delay.
    /// @param disputeLifetime This contract's audit + reveal + voting windows.
    error DisputeUnbondingTooShort(uint256 unbondingDelay, uint256 disputeLifetime);
    /// @notice ETH may only arrive as a bond or from slashing.
    /// @param from The sender.
    error DisputeUnexpectedPayment(address from);
    /// @notice Sending ETH failed.
    /// @param to The recipient.
    /// @param amount The amount.
    error DisputeTransferFailed(address to, uint256 amount);

    /// @param staking The Staking contract.
    /// @param receiptDomainContract The PaymentChannels contract (the receipts' EIP-712 verifying contract).
    /// @param p Bonds, windows and shares; windows within [1 minute, 30 days], quorum within [50%, 100%).
    constructor(IStaking staking, address receiptDomainContract, Params memory p) {
        if (
            address(staking) == address(0) || receiptDomainContract == address(0) || p.minBond == 0 || p.bondBps > BPS
                || p.slashBps == 0 || p.slashBps > BPS || p.challengerBps + p.burnBps > BPS || p.quorumBps < BPS / 2
                || p.quorumBps >= BPS || p.auditWindow < 1 hours || !_windowOk(p.auditWindow)
                || !_windowOk(p.revealWindow) || !_windowOk(p.votingPeriod) || p.minStakeAgeBlocks > 1_000_000
        ) {
            revert DisputeInvalidParams();
        }
        uint256 lifetime = p.auditWindow + p.revealWindow + p.votingPeriod;
        uint256 delay = staking.UNBONDING_DELAY();
        if (delay <= lifetime) revert DisputeUnbondingTooShort(delay, lifetime);
        STAKING = staking;
        RECEIPT_DOMAIN_CONTRACT = receiptDomainContract;
        MIN_BOND = p.minBond;
        BOND_BPS = p.bondBps;
        AUDIT_WINDOW = p.auditWindow;
        REVEAL_WINDOW = p.revealWindow;
        VOTING_PERIOD = p.votingPeriod;
        QUORUM_BPS = p.quorumBps;
        SLASH_BPS = p.slashBps;
        CHALLENGER_BPS = p.challengerBps;
        BURN_BPS = p.burnBps;
        MIN_STAKE_AGE_BLOCKS = p.minStakeAgeBlocks;
    }

    /// @notice Accepts ETH only from Staking (slashed stake).
    receive() external payable {
        if (msg.sender != address(STAKING)) revert DisputeUnexpectedPayment(msg.sender);
    }

    /// @notice Commit to a challenge without showing it: reveal it with `challenge` in a later block, within
    ///         `REVEAL_WINDOW`. A copy of the commitment is useless to anyone else (it names the challenger).
    /// @param commitment `commitmentOf(challenger, node, receiptLeaf, challengerOutputHash, salt)`.
    function commit(bytes32 commitment) external {
        Commitment storage existing = _commitments[commitment];
        if (existing.blockNumber != 0 && block.timestamp <= uint256(existing.timestamp) + REVEAL_WINDOW) {
            revert DisputeAlreadyCommitted();
        }
        _commitments[commitment] = Commitment({blockNumber: uint64(block.number), timestamp: uint64(block.timestamp)});
        emit Committed(commitment, block.timestamp + REVEAL_WINDOW);
    }

    /// @notice Reveal a committed challenge with its evidence and a bond of at least `requiredBond(node)`. The
    ///         caller's vote against the node is counted at once.
    /// @param evidence The receipt, its proof, the batch and the node's batch signature.
    /// @param challengerOutputHash The hash of the output the challenger computed.
    /// @param salt The secret mixed into the commitment.
    /// @return disputeId The new dispute.
    function challenge(Evidence calldata evidence, bytes32 challengerOutputHash, bytes32 salt)
        external
        payable
        returns (uint256 disputeId)
    {
        bytes32 leaf = receiptLeaf(evidence.receipt);
        _consumeCommitment(commitmentOf(msg.sender, evidence.batch.node, leaf, challengerOutputHash, salt));
        uint256 weight = voteWeight(msg.sender, block.number - 1);
        if (weight == 0) revert DisputeNotValidator(msg.sender);
        _checkEvidence(evidence, leaf, challengerOutputHash);
        disputeId = _open(evidence.batch.node, leaf, challengerOutputHash, weight);
        Dispute storage d = _disputes[disputeId];
        emit DisputeOpened(
            disputeId,
            d.node,
            msg.sender,
            evidence.receipt,
            leaf,
            challengerOutputHash,
            msg.value,
            d.slashTarget,
            d.deadline
        );
        emit Voted(disputeId, msg.sender, true, weight);
    }

    /// @notice Vote on an open dispute with the caller's validator stake at the block before the challenge.
    /// @param disputeId The dispute.
    /// @param nodeWrong True to side with the challenger, false to side with the node.
    function vote(uint256 disputeId, bool nodeWrong) external {
        Dispute storage d = _existing(disputeId);
        if (block.timestamp >= d.deadline) revert DisputeVotingClosed(disputeId, d.deadline);
        if (_votes[disputeId][msg.sender].weight != 0) revert DisputeAlreadyVoted(disputeId, msg.sender);
        uint256 weight = voteWeight(msg.sender, d.snapshotBlock);
        if (weight == 0) revert DisputeNotValidator(msg.sender);
        _votes[disputeId][msg.sender] = Vote({weight: SafeCast.toUint128(weight), nodeWrong: nodeWrong, claimed: false});
        if (nodeWrong) d.votesNodeWrong += weight;
        else d.votesNodeRight += weight;
        _lockVoter(msg.sender, d.deadline);
        emit Voted(disputeId, msg.sender, nodeWrong, weight);
    }

    /// @notice Resolve a dispute after its voting period. Anyone may call.
    /// @param disputeId The dispute.
    function resolve(uint256 disputeId) external nonReentrant {
        Dispute storage d = _existing(disputeId);
        if (d.outcome != Outcome.Pending) revert DisputeAlreadyResolved(disputeId);
        if (block.timestamp < d.deadline) revert DisputeVotingOpen(disputeId, d.deadline);
        _openAgainst[d.node] -= 1;
        if (quorumReached(disputeId)) {
            d.outcome = Outcome.NodeSlashed;
            // One bad receipt costs its node one slash, however many validators proved it.
            bytes32 receiptKey = keccak256(abi.encode(d.node, d.receiptLeaf));
            bool first = !_receiptSlashed[receiptKey];
            _receiptSlashed[receiptKey] = true;
            // Interaction with our own trusted Staking; it sends the slashed ETH back to receive().
            uint256 slashed = first ? STAKING.slash(d.node, d.slashTarget) : 0;
            uint256 burned = slashed * BURN_BPS / BPS;
            uint256 challengerReward = slashed * CHALLENGER_BPS / BPS;
            d.slashed = slashed;
            d.burned = burned;
            d.voterPool = slashed - burned - challengerReward;
            _credit(disputeId, d.challenger, d.bond + challengerReward);
            // The bond was owed already; the slash adds what is not burned.
            _owed += slashed - burned;
            emit DisputeResolved(disputeId, d.outcome, slashed, d.voterPool, burned);
            if (burned > 0) _send(BURN_ADDRESS, burned);
        } else {
            d.outcome = Outcome.ChallengerLost;
            if (d.votesNodeRight > 0) {
                d.voterPool = d.bond;
                emit DisputeResolved(disputeId, d.outcome, 0, d.voterPool, 0);
            } else {
                // Nobody voted for the node: the bond is burned (never the node's, or its own puppet would challenge
                // for free).
                d.burned = d.bond;
                _owed -= d.bond;
                emit DisputeResolved(disputeId, d.outcome, 0, 0, d.bond);
                _send(BURN_ADDRESS, d.bond);
            }
        }
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

    /// @notice Withdraw credited funds (a winning challenger's bond and reward; a failed bond for a node).
    /// @return amount The amount sent.
    function withdraw() external nonReentrant returns (uint256 amount) {
        amount = _credits[msg.sender];
        if (amount == 0) revert DisputeNothingToClaim(msg.sender);
        _credits[msg.sender] = 0;
        _owed -= amount;
        emit CreditWithdrawn(msg.sender, amount);
        _send(msg.sender, amount);
    }

    /// @inheritdoc IDisputes
    function isLocked(address account) external view returns (bool) {
        return _openAgainst[account] != 0 || block.timestamp < _votingLockedUntil[account];
    }

    /// @inheritdoc IDisputes
    function disputeLifetime() external view returns (uint256) {
        return AUDIT_WINDOW + REVEAL_WINDOW + VOTING_PERIOD;
    }

    /// @notice A validator's vote weight at `snapshot`: its stake then, but no more than it had
    ///         `MIN_STAKE_AGE_BLOCKS` earlier (stake too young to vote does not count).
    /// @param validator The validator.
    /// @param snapshot The block before the challenge.
    /// @return The weight in wei.
    function voteWeight(address validator, uint256 snapshot) public view returns (uint256) {
        uint256 atSnapshot = STAKING.validatorStakeAt(validator, snapshot);
        if (atSnapshot == 0 || snapshot < MIN_STAKE_AGE_BLOCKS) return 0;
        uint256 aged = STAKING.validatorStakeAt(validator, snapshot - MIN_STAKE_AGE_BLOCKS);
        return aged < atSnapshot ? aged : atSnapshot;
    }

    /// @notice Whether more than `QUORUM_BPS` of the validator stake at the challenge has voted against the node.
    /// @param disputeId The dispute.
    /// @return True if the node would be slashed if voting ended now.
    function quorumReached(uint256 disputeId) public view returns (bool) {
        Dispute storage d = _existing(disputeId);
        return d.votesNodeWrong * BPS > d.totalStake * QUORUM_BPS;
    }

    /// @notice The bond a challenge of `node` needs now: `BOND_BPS` of the slash it seeks, at least `MIN_BOND`.
    /// @param node The node operator.
    /// @return The bond in wei.
    function requiredBond(address node) external view returns (uint256) {
        return _requiredBond(STAKING.bondedOf(node) * SLASH_BPS / BPS);
    }

    /// @notice The commitment a challenger publishes first.
    /// @param challenger Who will reveal.
    /// @param node The accused node operator.
    /// @param leaf The receipt's Merkle leaf (`receiptLeaf`).
    /// @param challengerOutputHash The challenger's output hash.
    /// @param salt A secret the challenger picks.
    /// @return The commitment.
    function commitmentOf(address challenger, address node, bytes32 leaf, bytes32 challengerOutputHash, bytes32 salt)
        public
        pure
        returns (bytes32)
    {
        return keccak256(abi.encode(challenger, node, leaf, challengerOutputHash, salt));
    }

    /// @notice A commitment's block and time (zero if none).
    /// @param commitment The commitment.
    /// @return blockNumber The block it was made in.
    /// @return timestamp When it was made.
    function commitmentInfo(bytes32 commitment) external view returns (uint256 blockNumber, uint256 timestamp) {
        Commitment storage c = _commitments[commitment];
        return (c.blockNumber, c.timestamp);
    }

    /// @notice A receipt's Merkle leaf: its EIP-712 struct hash.
    /// @param receipt The receipt.
    /// @return The leaf.
    function receiptLeaf(Receipt calldata receipt) public pure returns (bytes32) {
        return keccak256(
            abi.encode(
                RECEIPT_TYPEHASH,
                receipt.jobId,
                receipt.modelId,
                receipt.inputHash,
                receipt.outputHash,
                receipt.units,
                receipt.price,
                receipt.channelId,
                receipt.issuedAt
            )
        );
    }

    /// @notice The EIP-712 digest of a receipt batch, in the PaymentChannels domain: what the node signs.
    /// @param batch The batch.
    /// @return The digest.
    function batchDigest(ReceiptBatch calldata batch) public view returns (bytes32) {
        bytes32 structHash = keccak256(abi.encode(BATCH_TYPEHASH, batch.root, batch.node, batch.count, batch.issuedAt));
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

    /// @notice A challenger's dispute of a node's receipt, if any.
    /// @param node The node operator.
    /// @param leaf The receipt's leaf.
    /// @param challenger The challenger.
    /// @return exists Whether it disputed it.
    /// @return disputeId The dispute (0 if none).
    function disputeOf(address node, bytes32 leaf, address challenger)
        external
        view
        returns (bool exists, uint256 disputeId)
    {
        uint256 plusOne = _byReceiptPlusOne[_receiptKey(node, leaf, challenger)];
        return (plusOne != 0, plusOne == 0 ? 0 : plusOne - 1);
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

    /// @notice Open disputes against `node`.
    /// @param node The node operator.
    /// @return The count.
    function openDisputesAgainst(address node) external view returns (uint256) {
        return _openAgainst[node];
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

    /// @dev Delete a commitment made in an earlier block and still within its reveal window.
    function _consumeCommitment(bytes32 commitment) private {
        Commitment memory c = _commitments[commitment];
        if (c.blockNumber == 0 || c.blockNumber >= block.number) revert DisputeNotCommitted();
        uint256 revealBy = uint256(c.timestamp) + REVEAL_WINDOW;
        if (block.timestamp > revealBy) revert DisputeCommitmentExpired(revealBy);
        delete _commitments[commitment];
    }

    /// @dev Every check of the evidence itself.
    function _checkEvidence(Evidence calldata ev, bytes32 leaf, bytes32 challengerOutputHash) private view {
        uint256 challengeableUntil = uint256(ev.receipt.issuedAt) + AUDIT_WINDOW;
        if (block.timestamp > challengeableUntil) revert DisputeReceiptTooOld(ev.receipt.issuedAt, challengeableUntil);
        if (!MerkleProof.verifyCalldata(ev.proof, ev.batch.root, leaf)) revert DisputeInvalidProof();
        address signer = ECDSA.recoverCalldata(batchDigest(ev.batch), ev.batchSignature);
        if (signer != ev.batch.node) revert DisputeInvalidReceiptSignature(signer, ev.batch.node);
        if (STAKING.roleOf(ev.batch.node) != IStaking.Role.Node) revert DisputeNotANode(ev.batch.node);
        if (challengerOutputHash == ev.receipt.outputHash) revert DisputeSameOutput();
        uint256 existing = _byReceiptPlusOne[_receiptKey(ev.batch.node, leaf, msg.sender)];
        if (existing != 0) revert DisputeAlreadyExists(leaf, existing - 1);
    }

    /// @dev Check the bond and record a new dispute with the challenger's vote; locks the node and the challenger.
    function _open(address node, bytes32 leaf, bytes32 challengerOutputHash, uint256 weight)
        private
        returns (uint256 disputeId)
    {
        uint256 slashTarget = STAKING.bondedOf(node) * SLASH_BPS / BPS;
        if (slashTarget == 0) revert DisputeNothingToSlash(node);
        uint256 required = _requiredBond(slashTarget);
        if (msg.value < required) revert DisputeBondTooSmall(msg.value, required);
        disputeId = _disputes.length;
        uint256 deadline = block.timestamp + VOTING_PERIOD;
        uint256 snapshot = block.number - 1;
        Dispute storage d = _disputes.push();
        d.node = node;
        d.deadline = uint64(deadline);
        d.challenger = msg.sender;
        d.snapshotBlock = uint64(snapshot);
        d.receiptLeaf = leaf;
        d.challengerOutputHash = challengerOutputHash;
        d.bond = msg.value;
        d.slashTarget = slashTarget;
        d.totalStake = STAKING.totalValidatorStakeAt(snapshot);
        d.votesNodeWrong = weight;
        _byReceiptPlusOne[_receiptKey(node, leaf, msg.sender)] = disputeId + 1;
        _votes[disputeId][msg.sender] = Vote({weight: SafeCast.toUint128(weight), nodeWrong: true, claimed: false});
        _openAgainst[node] += 1;
        _lockVoter(msg.sender, deadline);
        _owed += msg.value;
    }

    function _requiredBond(uint256 slashTarget) private view returns (uint256) {
        uint256 scaled = slashTarget * BOND_BPS / BPS;
        return scaled > MIN_BOND ? scaled : MIN_BOND;
    }

    function _lockVoter(address voter, uint256 deadline) private {
        if (_votingLockedUntil[voter] < deadline) _votingLockedUntil[voter] = deadline;
    }

    function _credit(uint256 disputeId, address account, uint256 amount) private {
        _credits[account] += amount;
        emit Credited(disputeId, account, amount);
    }

    function _receiptKey(address node, bytes32 leaf, address challenger) private pure returns (bytes32) {
        return keccak256(abi.encode(node, leaf, challenger));
    }

    function _windowOk(uint256 window) private pure returns (bool) {
        return window >= 1 minutes && window <= 30 days;
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
