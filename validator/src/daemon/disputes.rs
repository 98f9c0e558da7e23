//! Disputes: challenging a wrong receipt (commit, reveal with a bond, gossip the evidence) and voting on other
//! validators' disputes after re-executing their evidence.

use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::primitives::{B256, U256};
use libp2p::PeerId;
use mlbridge_sdk::protocol::{AuditRecord, DISPUTES_TOPIC, DisputeEvidence, ReceiptMsg, WIRE_VERSION, encode};

use super::Shared;
use crate::chain::rpc;
use crate::reexec::Rejected;
use crate::{Error, Result};

/// Challenge `r` (the node's output disagrees with `ours`): commit, reveal with the required bond once the
/// commitment is confirmed, then gossip the evidence so other validators can vote.
pub(super) async fn challenge(
    shared: &Arc<Shared>,
    node_peer: PeerId,
    r: &ReceiptMsg,
    record: AuditRecord,
    ours: B256,
) -> Result<u64> {
    let d = &shared.chain.disputes;
    let me = shared.signer.address();
    let leaf = r.receipt().leaf();
    let salt = alloy::signers::local::PrivateKeySigner::random().to_bytes();
    let commitment = d.commitmentOf(me, r.node(), leaf, ours, salt).call().await.map_err(rpc)?;
    shared.chain.transact("commit", d.commit(commitment).into_transaction_request()).await?;
    let bond = d.requiredBond(r.node()).call().await.map_err(rpc)?;
    let reveal = d.challenge(r.evidence(), ours, salt).value(bond).into_transaction_request();
    shared.chain.transact("challenge", reveal).await?;
    let found = d.disputeOf(r.node(), leaf, me).call().await.map_err(rpc)?;
    let id: u64 = found.disputeId.saturating_to();
    shared.metrics.disputes_opened.inc();
    tracing::warn!(target: "validator::disputes", dispute = id, node = %r.node(), job = %r.job_id, bond = %bond, "dispute opened");
    let evidence = DisputeEvidence { version: WIRE_VERSION, dispute_id: id, node_peer: node_peer.to_bytes(), record };
    shared.keep_evidence(evidence.clone());
    if let Err(e) = shared.client.publish(DISPUTES_TOPIC, encode(&evidence)).await {
        tracing::warn!(target: "validator::disputes", dispute = id, error = %e,
            "could not gossip the evidence; voters will audit the node themselves");
    }
    Ok(id)
}

/// What a dispute is about, from its `DisputeOpened` event.
#[derive(Clone, Debug)]
pub(super) struct Opened {
    pub(super) id: u64,
    pub(super) node: alloy::primitives::Address,
    pub(super) job_id: B256,
    pub(super) leaf: B256,
    pub(super) snapshot: u64,
}

/// Re-execute a dispute's job and vote. Evidence: what the challenger gossiped, else the node's own audit record.
/// Abstains (returns `Ok(None)`) when no record bound to the receipt can be had or the model is not held.
pub(super) async fn vote(shared: &Arc<Shared>, opened: &Opened) -> Result<Option<bool>> {
    let me = shared.signer.address();
    let d = &shared.chain.disputes;
    let weight = d.voteWeight(me, U256::from(opened.snapshot)).call().await.map_err(rpc)?;
    if weight.is_zero() {
        tracing::info!(target: "validator::disputes", dispute = opened.id, "no vote: our stake is too young or too small at the challenge");
        return Ok(None);
    }
    let Some(node_wrong) = judge(shared, opened).await else { return Ok(None) };
    shared.chain.transact("vote", d.vote(U256::from(opened.id), node_wrong).into_transaction_request()).await?;
    let side = if node_wrong { "node_wrong" } else { "node_right" };
    shared.metrics.votes.with_label_values(&[side]).inc();
    tracing::info!(target: "validator::disputes", dispute = opened.id, node = %opened.node, side, "voted");
    Ok(Some(node_wrong))
}

/// Whether the node was wrong, from the first record that is bound to the disputed receipt.
async fn judge(shared: &Arc<Shared>, opened: &Opened) -> Option<bool> {
    let wait = Duration::from_secs_f64(shared.config.duties.evidence_wait_secs.max(0.0));
    let started = Instant::now();
    let mut tried = 0;
    loop {
        let gossiped = shared.evidence_for(opened.id);
        for ev in gossiped.iter().skip(tried) {
            tried += 1;
            if let Some(verdict) = judge_record(shared, opened, &ev.record).await {
                return Some(verdict);
            }
        }
        if started.elapsed() >= wait {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // No usable evidence gossiped: ask the accused node for its own record.
    let peer = shared.node_peer(opened.node).await.ok().flatten().and_then(|p| PeerId::from_bytes(&p).ok())?;
    match super::receipts::audit(shared, peer, opened.job_id).await {
        Ok(record) => judge_record(shared, opened, &record).await,
        Err(reason) => {
            tracing::info!(target: "validator::disputes", dispute = opened.id, reason, "no evidence and no audit: abstaining");
            None
        }
    }
}

/// Judge one record: it must carry the disputed receipt (same leaf, same node) and hash correctly.
async fn judge_record(shared: &Arc<Shared>, opened: &Opened, record: &AuditRecord) -> Option<bool> {
    let r = &record.receipt;
    if r.receipt().leaf() != opened.leaf || r.node() != opened.node || !r.verify(&shared.chain.deployment().domain()) {
        shared.metrics.records_rejected.with_label_values(&["wrong_receipt"]).inc();
        return None;
    }
    match shared.reexec.check(r, record).await {
        Ok(c) => Some(!c.agrees),
        Err(rejected) => {
            shared.metrics.records_rejected.with_label_values(&[rejected.label()]).inc();
            if let Rejected::UnknownModel(m) = rejected {
                tracing::info!(target: "validator::disputes", dispute = opened.id, model = %m, "model not held: abstaining");
            }
            None
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
        let winning = if slashed { dispute.votesNodeWrong } else { dispute.votesNodeRight };
        let amount = dispute.voterPool * v.weight / winning.max(U256::from(1u64));
        let tx = d.claimVoteReward(U256::from(id)).into_transaction_request();
        match shared.chain.transact("claim vote reward", tx).await {
            Ok(_) => {
                shared.metrics.claimed_wei.inc_by(amount.saturating_to());
                tracing::info!(target: "validator::disputes", dispute = id, wei = %amount, "claimed vote reward");
            }
            Err(Error::Refused { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
