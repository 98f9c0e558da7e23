//! The gossip loop: receipts in, samples out to audits and re-execution; dispute evidence kept for voting.

use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::primitives::B256;
use libp2p::PeerId;
use mlbridge_sdk::client::MAX_RECEIPT_SKEW_SECS;
use mlbridge_sdk::client::{GossipMessage, MessageAcceptance};
use mlbridge_sdk::protocol::{
    AuditRecord, AuditRequest, DISPUTES_TOPIC, EVIDENCE_PARTS_TOPIC, ErrorKind, MAX_GOSSIP_BYTES, RECEIPTS_TOPIC,
    ReceiptBatchGossip, ReceiptMsg, Request, Response, decode,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Shared, lock, unix_now};
use crate::checks::CheckedJob;
use crate::reexec::Rejected;

/// Audits retried this many times when the node says it is overloaded (its per-peer audit rate), before the
/// refusal counts against it.
const OVERLOADED_RETRIES: u32 = 3;

pub(super) async fn gossip_loop(shared: Arc<Shared>, mut rx: mpsc::Receiver<GossipMessage>, stop: CancellationToken) {
    loop {
        let msg = tokio::select! {
            () = stop.cancelled() => return,
            m = rx.recv() => match m { Some(m) => m, None => return },
        };
        shared.metrics.gossip_messages.with_label_values(&[&msg.topic]).inc();
        let verdict = if msg.topic == RECEIPTS_TOPIC {
            on_receipt(&shared, msg.source, &msg.data).await
        } else if msg.topic == DISPUTES_TOPIC {
            super::evidence::on_evidence(&shared, &msg.data)
        } else if msg.topic == EVIDENCE_PARTS_TOPIC {
            super::evidence::on_part(&shared, &msg.data)
        } else {
            MessageAcceptance::Ignore
        };
        let _ = shared.client.validate(&msg, verdict).await;
    }
}

/// The receipts of one gossiped batch message, each with its proof, if the batch is signed by the node it names and
/// its leaves build its root (one signature check per message), or why not (a metric label).
fn unpack(shared: &Shared, data: &[u8]) -> Result<Vec<ReceiptMsg>, &'static str> {
    let g = decode::<ReceiptBatchGossip>(data, MAX_GOSSIP_BYTES).map_err(|_| "malformed")?;
    if g.receipts.is_empty() {
        return Err("malformed");
    }
    // Leaves that do not build the signed root, or a receipt that is not its leaf: not what the node signed.
    let receipts = g.receipts().map_err(|e| if matches!(e, "root" | "leaf") { "signature" } else { "malformed" })?;
    if !g.batch.batch().verify(&g.batch.signature, &shared.chain.deployment().domain()) {
        return Err("signature");
    }
    Ok(receipts)
}

/// Why a receipt (proved into a signed batch) is refused before sampling (a metric label), or `Ok` with the node's
/// registered PeerId (whoever relayed its batch message; the audit goes to the node).
async fn admit(shared: &Shared, r: &ReceiptMsg) -> Result<PeerId, &'static str> {
    if !r.issued_near(unix_now(), MAX_RECEIPT_SKEW_SECS) {
        return Err("stale");
    }
    let leaf = r.receipt().leaf();
    if shared.seen.contains_key(&leaf) {
        return Err("duplicate");
    }
    let node = match shared.node_peer(r.node()).await {
        Ok(Some(peer)) => PeerId::from_bytes(&peer).map_err(|_| "unregistered_node")?,
        Ok(None) => return Err("unregistered_node"),
        Err(e) => {
            tracing::warn!(target: "validator::receipts", error = %e, "cannot look up the node in Staking");
            return Err("chain_unavailable");
        }
    };
    shared.seen.insert(leaf, ());
    if shared.reexec.model(r.model_id).is_none() {
        return Err("unknown_model");
    }
    Ok(node)
}

/// A gossiped batch of receipts (DESIGN.md §3: receipts travel by batch): unpack it with one signature check, then
/// admit, count and maybe sample each receipt. The verdict: forged batches are rejected, so the peers relaying them
/// lose score; a message whose receipts were all seen before or judged stale is ignored; the rest is forwarded.
async fn on_receipt(shared: &Arc<Shared>, source: PeerId, data: &[u8]) -> MessageAcceptance {
    let receipts = match unpack(shared, data) {
        Ok(r) => r,
        Err(reason) => {
            tracing::debug!(target: "validator::receipts", %source, reason, "receipt batch refused");
            shared.metrics.receipts_seen.inc();
            shared.metrics.receipts_rejected.with_label_values(&[reason]).inc();
            return MessageAcceptance::Reject;
        }
    };
    let mut verdict = MessageAcceptance::Ignore;
    for r in receipts {
        match on_one(shared, source, r).await {
            MessageAcceptance::Reject => return MessageAcceptance::Reject,
            MessageAcceptance::Accept => verdict = MessageAcceptance::Accept,
            MessageAcceptance::Ignore => {}
        }
    }
    verdict
}

/// Admit, count and maybe sample one receipt of a verified batch; returns its gossip verdict.
async fn on_one(shared: &Arc<Shared>, source: PeerId, r: ReceiptMsg) -> MessageAcceptance {
    let m = &shared.metrics;
    m.receipts_seen.inc();
    let node_peer = match admit(shared, &r).await {
        Ok(p) => p,
        Err(reason) => {
            tracing::debug!(target: "validator::receipts", %source, reason, "receipt refused");
            m.receipts_rejected.with_label_values(&[reason]).inc();
            return match reason {
                "unknown_model" => MessageAcceptance::Accept,
                // Judged against our view of the time or of the chain (which may lag), or simply seen before: never
                // held against the relaying peer. A receipt signed by a key that is no registered node is a forgery
                // (anyone can make them by the thousand, each costing us a lookup): its relayer is scored down.
                "stale" | "chain_unavailable" | "duplicate" => MessageAcceptance::Ignore,
                _ => MessageAcceptance::Reject,
            };
        }
    };
    if !lock(&shared.sampler).should_check(r.node(), r.receipt().leaf()) {
        return MessageAcceptance::Accept;
    }
    m.receipts_sampled.inc();
    let node = r.node();
    if !shared.take_audit(node) {
        m.samples_dropped.inc();
        return MessageAcceptance::Accept;
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        if let Ok(_slot) = shared.audit_slots.acquire().await {
            check_receipt(&shared, node_peer, &r).await;
        }
        shared.release_audit(node);
    });
    MessageAcceptance::Accept
}

/// Fetch a job's record from `node` over the audit protocol (signed with the validator key). A refusal is returned
/// as a metric label.
pub(super) async fn audit(shared: &Shared, node: PeerId, job_id: B256) -> Result<AuditRecord, &'static str> {
    let started = Instant::now();
    let mut tries = 0;
    loop {
        let request =
            AuditRequest::signed(job_id, &shared.peer_bytes, unix_now(), &shared.signer, shared.signer.address())
                .map_err(|_| "signing")?;
        let answer = shared.client.send_to(node, Request::Audit(request)).await;
        let refusal = match answer {
            Ok(Response::Audit(record)) => {
                shared.metrics.audit_seconds.observe(started.elapsed().as_secs_f64());
                return Ok(record.as_ref().clone());
            }
            Ok(Response::Error(e)) => match e.kind {
                ErrorKind::Overloaded if tries < OVERLOADED_RETRIES => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(250 << tries)).await;
                    continue;
                }
                ErrorKind::Overloaded => "overloaded",
                ErrorKind::Forbidden => "forbidden",
                ErrorKind::NotFound => "not_found",
                _ => "error",
            },
            Ok(_) => "bad_answer",
            Err(e) if e.to_string().contains("did not answer") => "timeout",
            Err(_) => "unreachable",
        };
        shared.metrics.audit_refusals.with_label_values(&[refusal]).inc();
        return Err(refusal);
    }
}

/// Audit, re-execute and judge one sampled receipt; challenge a mismatch.
async fn check_receipt(shared: &Arc<Shared>, node_peer: PeerId, r: &ReceiptMsg) {
    let node = r.node();
    let record = match audit(shared, node_peer, r.job_id).await {
        Ok(rec) => rec,
        Err(reason) => {
            tracing::info!(target: "validator::audit", %node, reason, job = %r.job_id, "audit refused or unanswered");
            if reason != "forbidden" {
                // Refused because we are not staked is our problem, not the node's.
                shared.suspect(node);
            }
            return;
        }
    };
    let check = match shared.reexec.check(r, &record).await {
        Ok(c) => c,
        Err(rejected) => {
            shared.metrics.records_rejected.with_label_values(&[rejected.label()]).inc();
            tracing::info!(target: "validator::audit", %node, job = %r.job_id, reason = %rejected, "audit record not judged");
            // A record not bound to its receipt, or a paid generation on a version nobody can check (a node that
            // sells it escapes every check).
            if matches!(
                rejected,
                Rejected::WrongReceipt | Rejected::InputHash | Rejected::OutputHash | Rejected::Unverifiable(_)
            ) {
                shared.suspect(node);
            }
            return;
        }
    };
    let verdict = if check.agrees { "agree" } else { "mismatch" };
    shared.metrics.jobs_checked.with_label_values(&[verdict]).inc();
    lock(&shared.checks).push(CheckedJob {
        job_id: r.job_id,
        node,
        output_hash: r.output_hash,
        verdict: if check.agrees { 1 } else { 2 },
    });
    tracing::debug!(target: "validator::audit", %node, job = %r.job_id, verdict, max_diff = ?check.max_diff, "job checked");
    if !check.agrees {
        tracing::warn!(target: "validator::audit", %node, job = %r.job_id, max_diff = ?check.max_diff,
            tolerance = check.tolerance, "the node's output is wrong: challenging");
        shared.suspect(node);
    }
    if !check.agrees || shared.config.testing_challenge_honest {
        let ours = if check.agrees { alloy::primitives::keccak256(check.ours) } else { check.ours };
        match super::disputes::challenge(shared, node_peer, r, record, ours).await {
            Ok(Ok(_)) => {}
            Ok(Err(why)) => {
                tracing::warn!(target: "validator::disputes", %node, job = %r.job_id, %why, "not challenged")
            }
            Err(e) => {
                tracing::warn!(target: "validator::disputes", %node, job = %r.job_id, error = %e, "challenge failed")
            }
        }
    }
}
