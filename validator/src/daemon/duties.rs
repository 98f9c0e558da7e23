//! The duties loop: attest once per epoch, vote on disputes, resolve them after their deadline, claim.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use alloy::primitives::U256;
use alloy::providers::Provider;
use alloy::rpc::types::Filter;
use alloy::sol_types::SolEvent;
use mlbridge_sdk::chain::bindings::Disputes;
use tokio_util::sync::CancellationToken;

use super::disputes::{Opened, Voting, publish_evidence, settle, vote};
use super::{Shared, lock};
use crate::chain::rpc;
use crate::{Error, Result};

/// Blocks scanned for dispute events per query.
const SCAN_CHUNK: u64 = 5_000;

/// The longest pause between two gossips of our evidence, or two tries at a vote without evidence.
const MAX_PAUSE: Duration = Duration::from_secs(600);

/// `base` doubled `n` times, at most [`MAX_PAUSE`].
fn backoff(base: Duration, n: u32) -> Duration {
    base.saturating_mul(1u32.checked_shl(n.min(16)).unwrap_or(u32::MAX)).min(MAX_PAUSE)
}

/// A dispute the duties loop follows until it is settled for us.
struct Followed {
    opened: Opened,
    challenger_is_me: bool,
    deadline: u64,
    /// A vote is being prepared or sent (cleared again if it failed or found no evidence, to retry).
    voting: Arc<AtomicBool>,
    /// When we last gossiped the evidence of our own challenge, and how many times (the pause before the next
    /// time doubles from `evidence_wait_secs` up to [`MAX_PAUSE`]).
    published: Option<(Instant, u32)>,
    /// Votes tried without a record bound to the receipt (the pause before the next try doubles with each).
    no_evidence: Arc<std::sync::atomic::AtomicU32>,
}

#[derive(Default)]
struct State {
    attested_epoch: Option<u64>,
    scanned: Option<u64>,
    followed: HashMap<u64, Followed>,
}

pub(super) async fn duties_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let poll = Duration::from_millis(shared.config.poll_interval_ms.max(10));
    let mut state = State::default();
    loop {
        tick(&shared, &mut state).await;
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(poll) => {}
        }
    }
}

/// One round of every duty. Each runs on its own: one failing (an RPC hiccup, a refused transaction) never keeps
/// the others from running, and it is retried next round.
async fn tick(shared: &Arc<Shared>, state: &mut State) {
    let warn =
        |duty: &str, e: Error| tracing::warn!(target: "validator::duties", duty, error = %e, "duty failed; retrying");
    let head = match shared.chain.head().await {
        Ok(h) => h,
        Err(e) => return warn("head", e),
    };
    if let Err(e) = attest(shared, state, head).await {
        warn("attest", e);
    }
    if let Err(e) = scan_disputes(shared, state, head).await {
        warn("scan disputes", e);
    }
    follow_disputes(shared, state).await;
    if let Err(e) = claim(shared).await {
        warn("claim", e);
    }
    if let Err(e) = gauges(shared).await {
        warn("metrics", e);
    }
}

async fn gauges(shared: &Arc<Shared>) -> Result<()> {
    let me = shared.signer.address();
    let stake = shared.chain.staking.validatorStakeOf(me).call().await.map_err(rpc)?;
    shared.metrics.stake_wei.set(wei_f64(stake));
    let earned = shared.chain.rewards.totalEarned(me).call().await.map_err(rpc)?;
    shared.metrics.earned_wei.set(wei_f64(earned));
    Ok(())
}

/// Attest the current epoch once `attest_at` of it has passed, with the jobs checked since the last attestation.
async fn attest(shared: &Arc<Shared>, state: &mut State, head: u64) -> Result<()> {
    let r = &shared.chain.rewards;
    let me = shared.signer.address();
    let epoch = r.currentEpoch().call().await.map_err(rpc)?;
    let epoch_u64: u64 = epoch.saturating_to();
    if state.attested_epoch == Some(epoch_u64) {
        return Ok(());
    }
    let start: u64 = r.epochStartBlock(epoch).call().await.map_err(rpc)?.saturating_to();
    let length: u64 = r.EPOCH_LENGTH().call().await.map_err(rpc)?.saturating_to();
    let at = start + (length as f64 * shared.config.duties.attest_at) as u64;
    // Too early, or so late that the transaction would land in the next epoch.
    if head < at || head + 1 >= start + length {
        return Ok(());
    }
    if r.hasAttested(me, epoch).call().await.map_err(rpc)? {
        state.attested_epoch = Some(epoch_u64);
        return Ok(());
    }
    if r.attestWeight(me, epoch).call().await.map_err(rpc)?.is_zero() {
        tracing::info!(target: "validator::duties", epoch = epoch_u64,
            "not attesting: no stake bonded through the whole previous epoch yet");
        state.attested_epoch = Some(epoch_u64);
        return Ok(());
    }
    let attestation = lock(&shared.checks).prepare(epoch_u64)?;
    let jobs = attestation.jobs.len();
    let tx = r.attest(epoch, U256::from(jobs), attestation.root).into_transaction_request();
    shared.chain.transact("attest", tx).await?;
    state.attested_epoch = Some(epoch_u64);
    lock(&shared.checks).attested(&attestation);
    shared.metrics.attestations.inc();
    tracing::info!(target: "validator::duties", epoch = epoch_u64, jobs, root = %attestation.root, "attested");
    Ok(())
}

/// Learn of new disputes from `DisputeOpened` events.
async fn scan_disputes(shared: &Arc<Shared>, state: &mut State, head: u64) -> Result<()> {
    let me = shared.signer.address();
    let mut from = state.scanned.map_or(shared.chain.deployment().start_block, |b| b + 1);
    while from <= head {
        let to = head.min(from + SCAN_CHUNK - 1);
        let filter = Filter::new()
            .address(shared.chain.deployment().disputes)
            .event_signature(Disputes::DisputeOpened::SIGNATURE_HASH)
            .from_block(from)
            .to_block(to);
        let logs = shared.chain.provider().get_logs(&filter).await.map_err(rpc)?;
        for log in logs {
            let Ok(ev) = log.log_decode::<Disputes::DisputeOpened>() else { continue };
            let ev = ev.inner.data;
            let id: u64 = ev.disputeId.saturating_to();
            let dispute = shared.chain.disputes.getDispute(ev.disputeId).call().await.map_err(rpc)?;
            let opened = Opened {
                id,
                node: ev.node,
                job_id: ev.receipt.jobId,
                leaf: ev.receiptLeaf,
                model_id: ev.receipt.modelId,
                snapshot: dispute.snapshotBlock,
            };
            let model_held = shared.reexec.model(ev.receipt.modelId).is_some();
            shared.know_dispute(id, ev.node, ev.receiptLeaf, ev.challenger, model_held);
            state.followed.entry(id).or_insert(Followed {
                opened,
                challenger_is_me: ev.challenger == me,
                deadline: ev.deadline.saturating_to(),
                voting: Arc::new(AtomicBool::new(false)),
                published: None,
                no_evidence: Arc::default(),
            });
        }
        state.scanned = Some(to);
        from = to + 1;
    }
    Ok(())
}

/// Vote on open disputes (in the background), resolve the ones we took part in after their deadline, claim. Each
/// dispute is handled on its own: one that fails is retried next round without holding up the others.
async fn follow_disputes(shared: &Arc<Shared>, state: &mut State) {
    if state.followed.is_empty() {
        return;
    }
    let now = match shared.chain.provider().get_block_by_number(alloy::eips::BlockNumberOrTag::Latest).await {
        Ok(b) => b.map_or(0, |b| b.header.timestamp),
        Err(e) => return tracing::warn!(target: "validator::duties", error = %e, "cannot read the head; retrying"),
    };
    let mut done = Vec::new();
    for (id, f) in &mut state.followed {
        match follow(shared, *id, f, now).await {
            Ok(true) => done.push(*id),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(target: "validator::disputes", dispute = id, error = %e, "dispute duty failed; retrying")
            }
        }
    }
    for id in done {
        state.followed.remove(&id);
        shared.forget_dispute(id);
    }
}

/// One dispute's duty this round; `true` once nothing is left to do for it.
async fn follow(shared: &Arc<Shared>, id: u64, f: &mut Followed, now: u64) -> Result<bool> {
    let me = shared.signer.address();
    let d = &shared.chain.disputes;
    let dispute = d.getDispute(U256::from(id)).call().await.map_err(rpc)?;
    let mine = d.voteOf(U256::from(id), me).call().await.map_err(rpc)?;
    let involved = f.challenger_is_me || !mine.weight.is_zero();
    if dispute.outcome != 0 {
        if involved {
            settle(shared, id, f.challenger_is_me).await?;
        }
        return Ok(true);
    }
    if now < f.deadline {
        let every = Duration::from_secs_f64(shared.config.duties.evidence_wait_secs.max(1.0));
        if f.challenger_is_me && f.published.is_none_or(|(t, n)| t.elapsed() >= backoff(every, n - 1)) {
            // Again until the deadline, less and less often: validators that join late or lag the chain get it too.
            if let Some(ev) = shared.evidence_for(id) {
                publish_evidence(shared, &ev).await;
            }
            f.published = Some((Instant::now(), f.published.map_or(1, |(_, n)| n + 1)));
        }
        if !involved && !f.voting.swap(true, Ordering::SeqCst) {
            let (shared, opened, voting) = (shared.clone(), f.opened.clone(), f.voting.clone());
            let (tries, deadline) = (f.no_evidence.clone(), f.deadline);
            tokio::spawn(async move {
                match vote(&shared, &opened).await {
                    Ok(Voting::Voted(_) | Voting::Never) => {}
                    Ok(Voting::NoEvidence) => {
                        // Retried after a growing pause (the challenger gossips its evidence again until the
                        // deadline; the accused node may answer an audit later).
                        // The pause ends early when evidence newly arrives, and never runs past the voting deadline.
                        let n = tries.fetch_add(1, Ordering::SeqCst);
                        let until = Instant::now() + backoff(every, n);
                        let had = shared.has_evidence(opened.id);
                        while Instant::now() < until
                            && (had || !shared.has_evidence(opened.id))
                            && super::unix_now() + 1 < deadline
                        {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        voting.store(false, Ordering::SeqCst);
                    }
                    Err(e) => {
                        tracing::warn!(target: "validator::disputes", dispute = opened.id, error = %e, "vote failed; retrying");
                        voting.store(false, Ordering::SeqCst);
                    }
                }
            });
        }
        return Ok(false);
    }
    if !involved {
        return Ok(true);
    }
    match shared.chain.transact("resolve", d.resolve(U256::from(id)).into_transaction_request()).await {
        // Refused: someone else resolved it first; the next round settles it.
        Ok(_) | Err(Error::Refused { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Claim epoch rewards once enough finished epochs are unclaimed, and withdraw dispute credits.
async fn claim(shared: &Arc<Shared>) -> Result<()> {
    let me = shared.signer.address();
    let r = &shared.chain.rewards;
    let unclaimed: u64 = r.unclaimedEpochs(me).call().await.map_err(rpc)?.saturating_to();
    if unclaimed >= shared.config.duties.claim_every_epochs.max(1) {
        let pending = r.pendingRewards(me).call().await.map_err(rpc)?;
        // Nothing to gain: no gas spent while the empty epochs are few. Once they fill a whole claim they are
        // claimed anyway, so the contract's views over unclaimed epochs stay bounded.
        if !pending.is_zero() || unclaimed >= shared.config.duties.claim_max_epochs.max(1) {
            let max = U256::from(shared.config.duties.claim_max_epochs);
            let receipt = shared.chain.transact("claim", r.claim(max).into_transaction_request()).await?;
            // What the claim paid, from its `Claimed` event (a claim walks at most claim_max_epochs).
            let paid = shared.chain.paid_to(&receipt, me);
            shared.metrics.claimed_wei.inc_by(wei_f64(paid));
            tracing::info!(target: "validator::duties", epochs = unclaimed, wei = %paid, "claimed rewards");
        }
    }
    let credit = shared.chain.disputes.creditOf(me).call().await.map_err(rpc)?;
    if !credit.is_zero() {
        let receipt = shared
            .chain
            .transact("withdraw dispute credit", shared.chain.disputes.withdraw().into_transaction_request())
            .await?;
        let paid = shared.chain.paid_to(&receipt, me);
        shared.metrics.claimed_wei.inc_by(wei_f64(paid));
        tracing::info!(target: "validator::duties", wei = %paid, "withdrew dispute credit");
    }
    Ok(())
}

/// Wei as a metric value (exact up to 2^53 wei, about 0.009 ETH; relative error 1e-16 beyond).
pub(super) fn wei_f64(wei: U256) -> f64 {
    f64::from(wei)
}
