//! Disputes: challenging a wrong receipt (commit, reveal with a bond, gossip the evidence) and voting on other
//! validators' disputes after re-executing their evidence.

use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::primitives::{B256, U256};
use alloy::providers::Provider;
use libp2p::PeerId;
use mlbridge_sdk::protocol::{
    AuditRecord, DISPUTES_TOPIC, DisputeEvidence, EVIDENCE_PARTS_TOPIC, EvidencePart, EvidenceSubject,
    MAX_EVIDENCE_BYTES, MAX_GOSSIP_BYTES, ReceiptMsg, WIRE_VERSION, encode,
};

use super::Shared;
use crate::chain::rpc;
use crate::reexec::Rejected;
use crate::{Error, Result};

/// Bond paid above `requiredBond`, in basis points: a small stake change by the node between our read and the reveal
/// does not revert it (a larger one is met by revealing again with the new bond). The whole bond comes back when the
/// challenge wins.
const BOND_MARGIN_BPS: u64 = 100;

/// Reveals sent per challenge (the node may raise its stake, and so the bond, again and again; each try re-reads it).
const REVEAL_TRIES: usize = 3;

/// Room left in a gossip message for gossipsub's own envelope (source, sequence number, topic, signature).
const GOSSIP_ENVELOPE_MARGIN: usize = 1024;

/// Why a mismatch was not challenged.
#[derive(Debug)]
pub(super) enum NotChallenged {
    /// The record is too large to gossip even in parts (`MAX_EVIDENCE_BYTES`): voters could only ask the accused
    /// node, which could refuse, and our bond would be lost. Counted, logged; the node stays suspected.
    EvidenceTooLarge(usize),
    /// We already disputed this receipt.
    AlreadyDisputed(u64),
    /// The contract would refuse us: no vote weight now (stake too young or gone), or a balance below the bond.
    CannotChallenge(&'static str),
}

impl std::fmt::Display for NotChallenged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::EvidenceTooLarge(n) => write!(f, "the record ({n} bytes) is too large to gossip as evidence"),
            Self::AlreadyDisputed(id) => write!(f, "already disputed (dispute {id})"),
            Self::CannotChallenge(why) => write!(f, "the contract would refuse the challenge: {why}"),
        }
    }
}

/// Challenge `r` (the node's output disagrees with `ours`): keep the evidence (memory and disk), commit, reveal with
/// the required bond once the commitment is confirmed (again with a re-read bond if the node raised its stake), then
/// gossip the evidence so other validators can vote (again until the deadline, by the duties loop).
pub(super) async fn challenge(
    shared: &Arc<Shared>,
    node_peer: PeerId,
    r: &ReceiptMsg,
    record: AuditRecord,
    ours: B256,
) -> Result<std::result::Result<u64, NotChallenged>> {
    let d = &shared.chain.disputes;
    let me = shared.signer.address();
    let leaf = r.receipt().leaf();
    let mut evidence =
        DisputeEvidence { version: WIRE_VERSION, dispute_id: u64::MAX, node_peer: node_peer.to_bytes(), record };
    // (The placeholder id encodes at least as long as the real one: the real evidence is no larger.)
    let size = encode(&evidence).len();
    if size > MAX_EVIDENCE_BYTES {
        shared.metrics.challenges_skipped.with_label_values(&["evidence_too_large"]).inc();
        return Ok(Err(NotChallenged::EvidenceTooLarge(size)));
    }
    let before = d.disputeOf(r.node(), leaf, me).call().await.map_err(rpc)?;
    if before.exists {
        shared.metrics.challenges_skipped.with_label_values(&["already_disputed"]).inc();
        return Ok(Err(NotChallenged::AlreadyDisputed(before.disputeId.saturating_to())));
    }
    // What the contract checks, checked before any gas or disk is spent (a node must not be able to make us commit
    // and write evidence for challenges that can only revert).
    let head = shared.chain.head().await?;
    if d.voteWeight(me, U256::from(head.saturating_sub(1))).call().await.map_err(rpc)?.is_zero() {
        shared.metrics.challenges_skipped.with_label_values(&["not_eligible"]).inc();
        return Ok(Err(NotChallenged::CannotChallenge("no vote weight (stake too young or not bonded)")));
    }
    let bond = bond_for(d.requiredBond(r.node()).call().await.map_err(rpc)?);
    if shared.chain.provider().get_balance(me).await.map_err(rpc)? < bond {
        shared.metrics.challenges_skipped.with_label_values(&["bond_unaffordable"]).inc();
        return Ok(Err(NotChallenged::CannotChallenge("the balance is below the bond")));
    }
    // On disk before the reveal. Kept if the reveal fails and the chain cannot say whether a dispute came of it (a
    // reveal sent but not seen confirmed may still be mined; the duties loop then finds it with its evidence).
    shared.keep_own_evidence(r.node(), leaf, &evidence)?;
    let (id, bond) = match reveal(shared, r, ours).await {
        Ok(opened) => opened,
        Err(e) => {
            if d.disputeOf(r.node(), leaf, me).call().await.is_ok_and(|found| !found.exists) {
                shared.drop_own_evidence(r.node(), leaf);
            }
            return Err(e);
        }
    };
    shared.metrics.disputes_opened.inc();
    tracing::warn!(target: "validator::disputes", dispute = id, node = %r.node(), job = %r.job_id, bond = %bond, "dispute opened");
    evidence.dispute_id = id;
    publish_evidence(shared, &evidence).await;
    Ok(Ok(id))
}

/// The bond we send for a `required` one: [`BOND_MARGIN_BPS`] above it.
fn bond_for(required: U256) -> U256 {
    required + required * U256::from(BOND_MARGIN_BPS) / U256::from(10_000u64)
}

/// Commit, then reveal with the bond read just before; returns the dispute id and the bond paid.
async fn reveal(shared: &Shared, r: &ReceiptMsg, ours: B256) -> Result<(u64, U256)> {
    let d = &shared.chain.disputes;
    let (me, leaf) = (shared.signer.address(), r.receipt().leaf());
    let salt = alloy::signers::local::PrivateKeySigner::random().to_bytes();
    let commitment = d.commitmentOf(me, r.node(), leaf, ours, salt).call().await.map_err(rpc)?;
    shared.chain.transact("commit", d.commit(commitment).into_transaction_request()).await?;
    let mut tries = 0;
    let bond = loop {
        tries += 1;
        let bond = bond_for(d.requiredBond(r.node()).call().await.map_err(rpc)?);
        let tx = d.challenge(r.evidence(), ours, salt).value(bond).into_transaction_request();
        match shared.chain.transact("challenge", tx).await {
            Ok(_) => break bond,
            // The same commitment stays valid within REVEAL_WINDOW: reveal again if the bond went up meanwhile.
            Err(e @ Error::Refused { .. }) => {
                // Anything else than a bond that went up (or a failed re-read) is the refusal itself.
                let Ok(now) = d.requiredBond(r.node()).call().await else { return Err(e) };
                if now <= bond || tries >= REVEAL_TRIES {
                    return Err(e);
                }
                tracing::warn!(target: "validator::disputes", node = %r.node(), %bond, required = %now,
                    "the node raised its stake before our reveal; revealing again with the new bond");
            }
            Err(e) => return Err(e),
        }
    };
    let found = d.disputeOf(r.node(), leaf, me).call().await.map_err(rpc)?;
    if !found.exists {
        return Err(Error::from(mlbridge_sdk::Error::Rpc(
            "the challenge was confirmed but the RPC shows no dispute for it; check the RPC endpoint".into(),
        )));
    }
    Ok((found.disputeId.saturating_to(), bond))
}

/// Gossip a dispute's evidence: whole when it fits one gossip message, else in parts signed by our key.
pub(super) async fn publish_evidence(shared: &Shared, evidence: &DisputeEvidence) {
    let whole = encode(evidence);
    let sent = if whole.len() <= MAX_GOSSIP_BYTES - GOSSIP_ENVELOPE_MARGIN {
        shared.client.publish(DISPUTES_TOPIC, whole).await.map_err(|e| e.to_string())
    } else {
        publish_parts(shared, evidence).await
    };
    if let Err(e) = sent {
        tracing::warn!(target: "validator::disputes", dispute = evidence.dispute_id, error = %e,
            "could not gossip the evidence; trying again");
    }
}

async fn publish_parts(shared: &Shared, evidence: &DisputeEvidence) -> std::result::Result<(), String> {
    let signer = mlbridge_sdk::signer::FastSigner::new(&shared.signer);
    let r = &evidence.record.receipt;
    let deployment = shared.chain.deployment();
    let subject = EvidenceSubject {
        chain_id: deployment.chain_id,
        disputes: deployment.disputes,
        dispute_id: evidence.dispute_id,
        node: r.node(),
        leaf: r.receipt().leaf(),
    };
    let parts =
        EvidencePart::split(evidence, &subject, &signer).ok_or("the evidence is larger than MAX_EVIDENCE_BYTES")?;
    for part in &parts {
        shared.client.publish(EVIDENCE_PARTS_TOPIC, encode(part)).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// What a dispute is about, from its `DisputeOpened` event.
#[derive(Clone, Debug)]
pub(super) struct Opened {
    pub(super) id: u64,
    pub(super) node: alloy::primitives::Address,
    pub(super) job_id: B256,
    pub(super) leaf: B256,
    pub(super) model_id: B256,
    pub(super) snapshot: u64,
}

/// The result of a voting attempt.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Voting {
    /// Voted (`true`: the node was wrong).
    Voted(bool),
    /// Cannot vote on this dispute (our stake is too young or small at the challenge, or we lack the model).
    Never,
    /// No record bound to the receipt yet (none gossiped, the node refused the audit): try again later.
    NoEvidence,
}

/// Re-execute a dispute's job and vote. Evidence: what the challenger gossiped, else the node's own audit record.
/// Never votes on a guess: without a record bound to the receipt, or without the model, it does not vote.
pub(super) async fn vote(shared: &Arc<Shared>, opened: &Opened) -> Result<Voting> {
    let me = shared.signer.address();
    let d = &shared.chain.disputes;
    let weight = d.voteWeight(me, U256::from(opened.snapshot)).call().await.map_err(rpc)?;
    if weight.is_zero() {
        tracing::info!(target: "validator::disputes", dispute = opened.id, "no vote: our stake is too young or too small at the challenge");
        return Ok(Voting::Never);
    }
    let node_wrong = match judge(shared, opened).await {
        Judged::Verdict(v) => v,
        Judged::NoModel => return Ok(Voting::Never),
        Judged::NoRecord => return Ok(Voting::NoEvidence),
    };
    shared.chain.transact("vote", d.vote(U256::from(opened.id), node_wrong).into_transaction_request()).await?;
    let side = if node_wrong { "node_wrong" } else { "node_right" };
    shared.metrics.votes.with_label_values(&[side]).inc();
    tracing::info!(target: "validator::disputes", dispute = opened.id, node = %opened.node, side, "voted");
    Ok(Voting::Voted(node_wrong))
}

enum Judged {
    Verdict(bool),
    NoModel,
    NoRecord,
}

/// Whether the node was wrong: from the challenger's gossiped evidence (waited for up to `evidence_wait_secs`),
/// else from the accused node's own audit record. A verdict is kept (a retried vote does not re-execute) and
/// evidence that can never be judged (not bound to the dispute's receipt, refused by the model) is not run again;
/// evidence whose re-execution failed for a passing reason is tried again.
async fn judge(shared: &Arc<Shared>, opened: &Opened) -> Judged {
    if shared.reexec.model(opened.model_id).is_none() {
        tracing::info!(target: "validator::disputes", dispute = opened.id, model = %opened.model_id, "model not held: abstaining");
        return Judged::NoModel;
    }
    if let Some(node_wrong) = shared.verdict(opened.id) {
        return Judged::Verdict(node_wrong);
    }
    let wait = Duration::from_secs_f64(shared.config.duties.evidence_wait_secs.max(0.0));
    let started = Instant::now();
    loop {
        if let Some(ev) = shared.evidence_for(opened.id) {
            match judge_record(shared, opened, &ev.record).await {
                Ok(verdict) => {
                    shared.metrics.vote_records.with_label_values(&["gossip"]).inc();
                    return keep_verdict(shared, opened.id, verdict);
                }
                Err(Unjudged::Never) => shared.evidence_failed(&ev),
                // Tried again after the duties loop's growing pause, not at once.
                Err(Unjudged::NotNow) => return Judged::NoRecord,
            }
        }
        if started.elapsed() >= wait {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some(peer) = shared.node_peer(opened.node).await.ok().flatten().and_then(|p| PeerId::from_bytes(&p).ok())
    else {
        return Judged::NoRecord;
    };
    match super::receipts::audit(shared, peer, opened.job_id).await {
        Ok(record) => match judge_record(shared, opened, &record).await {
            Ok(verdict) => {
                shared.metrics.vote_records.with_label_values(&["audit"]).inc();
                keep_verdict(shared, opened.id, verdict)
            }
            Err(_) => Judged::NoRecord,
        },
        Err(reason) => {
            tracing::info!(target: "validator::disputes", dispute = opened.id, reason,
                "no evidence yet and no audit: not voting now, trying again");
            Judged::NoRecord
        }
    }
}

fn keep_verdict(shared: &Shared, id: u64, verdict: Judged) -> Judged {
    if let Judged::Verdict(node_wrong) = verdict {
        shared.judged(id, node_wrong);
    }
    verdict
}

/// Why a record gave no verdict.
enum Unjudged {
    /// The same record never will (not bound to the dispute's receipt, refused by the model).
    Never,
    /// Re-execution failed for a passing reason (overloaded, a timeout): the record may be tried again.
    NotNow,
}

/// Judge one record: it must carry the disputed receipt (same leaf, same node) and hash correctly.
async fn judge_record(
    shared: &Arc<Shared>,
    opened: &Opened,
    record: &AuditRecord,
) -> std::result::Result<Judged, Unjudged> {
    let r = &record.receipt;
    if r.receipt().leaf() != opened.leaf || r.node() != opened.node || !r.verify(&shared.chain.deployment().domain()) {
        shared.metrics.records_rejected.with_label_values(&["wrong_receipt"]).inc();
        return Err(Unjudged::Never);
    }
    match shared.reexec.check(r, record).await {
        Ok(c) => Ok(Judged::Verdict(!c.agrees)),
        Err(Rejected::UnknownModel(_)) => Ok(Judged::NoModel),
        Err(rejected) => {
            shared.metrics.records_rejected.with_label_values(&[rejected.label()]).inc();
            Err(if rejected.is_permanent() { Unjudged::Never } else { Unjudged::NotNow })
        }
    }
}

/// A resolved dispute's result for us: claim the vote reward if we were on the winning side.
pub(super) async fn settle(shared: &Arc<Shared>, id: u64, challenger_is_me: bool) -> Result<()> {
    let me = shared.signer.address();
    let d = &shared.chain.disputes;
    let dispute = d.getDispute(U256::from(id)).call().await.map_err(rpc)?;
    // Outcome: 0 pending, 1 node slashed, 2 challenger lost (`Disputes.Outcome`).
    let slashed = dispute.outcome == 1;
    if challenger_is_me {
        let result = if slashed { "won" } else { "lost" };
        shared.metrics.disputes_resolved.with_label_values(&[result]).inc();
        tracing::info!(target: "validator::disputes", dispute = id, result, "our dispute was resolved");
    }
    let v = d.voteOf(U256::from(id), me).call().await.map_err(rpc)?;
    if !v.weight.is_zero() && !v.claimed && v.nodeWrong == slashed && !dispute.voterPool.is_zero() {
        let tx = d.claimVoteReward(U256::from(id)).into_transaction_request();
        match shared.chain.transact("claim vote reward", tx).await {
            Ok(receipt) => {
                let amount = shared.chain.paid_to(&receipt, me);
                shared.metrics.claimed_wei.inc_by(super::duties::wei_f64(amount));
                tracing::info!(target: "validator::disputes", dispute = id, wei = %amount, "claimed vote reward");
            }
            Err(Error::Refused { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
