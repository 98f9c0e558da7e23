//! The receipt signer (DESIGN.md §3, batched receipts): one operator signature per batch of answered jobs.
//!
//! Answered jobs queue their receipts. The first job to find nobody signing yields once (so the jobs that finished
//! with it queue theirs too), then signs on its own task everything queued (up to [`MAX_BATCH_LEAVES`] per batch: a Merkle tree, one signature over its root), and goes on
//! while more arrived meanwhile. So a lone job is signed without waiting or a thread hop, and under load a batch holds
//! the jobs answered while the previous signature was being made. Each job gets its receipt with its proof and the
//! signed batch; the batch itself goes to the gossip side (receipts for validators travel by batch, not by job).

use std::sync::{Arc, Mutex};

use alloy::primitives::B256;
use alloy::sol_types::Eip712Domain;
use mlbridge_sdk::protocol::{BatchMsg, ReceiptMsg};
use mlbridge_sdk::receipt::{MAX_BATCH_LEAVES, Receipt};
use mlbridge_sdk::signer::FastSigner;
use tokio::sync::{broadcast, oneshot};

use super::metrics::PaymentMetrics;
use crate::{Error, Result};

/// Batches one job signs for others before handing the rest to a task of its own (so no caller waits long).
const ROUNDS_PER_LEADER: usize = 4;

/// A signed batch and the receipts of it to gossip, in leaf order (jobs whose caller went away left out).
#[derive(Debug)]
pub struct SignedBatch {
    /// The signed batch.
    pub batch: BatchMsg,
    /// Every leaf of it.
    pub leaves: Vec<B256>,
    /// Its receipts to gossip with their leaf index, in leaf order.
    pub receipts: Vec<(usize, Receipt)>,
}

struct Pending {
    receipt: Receipt,
    reply: oneshot::Sender<Result<ReceiptMsg>>,
}

#[derive(Default)]
struct Queue {
    pending: Vec<Pending>,
    /// A task is signing (it takes whatever is queued before it stops).
    signing: bool,
}

struct Inner {
    operator: FastSigner,
    domain: Eip712Domain,
    metrics: PaymentMetrics,
    queue: Mutex<Queue>,
    batches: broadcast::Sender<Arc<SignedBatch>>,
}

/// The node's receipt signer (cloneable).
#[derive(Clone)]
pub struct ReceiptSigner {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ReceiptSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiptSigner").field("operator", &self.inner.operator.address()).finish_non_exhaustive()
    }
}

impl Inner {
    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sign what is queued, batch after batch, for at most `rounds` batches; `true` if the queue is empty and the
    /// signing flag released, `false` if work is left (the caller hands it on).
    fn lead(&self, rounds: usize) -> bool {
        for _ in 0..rounds {
            let mut pending = {
                let mut q = self.queue();
                if q.pending.is_empty() {
                    q.signing = false;
                    return true;
                }
                let n = q.pending.len().min(MAX_BATCH_LEAVES);
                q.pending.drain(..n).collect::<Vec<_>>()
            };
            // Jobs whose caller went away need no receipt (their charge was released).
            pending.retain(|p| !p.reply.is_closed());
            if !pending.is_empty() {
                self.sign(pending);
            }
        }
        false
    }

    fn sign(&self, pending: Vec<Pending>) {
        let receipts: Vec<Receipt> = pending.iter().map(|p| p.receipt.clone()).collect();
        let issued_at = receipts.iter().map(|r| r.issuedAt).max().unwrap_or_default();
        match ReceiptMsg::sign_batch(&receipts, self.operator.address(), issued_at, &self.operator, &self.domain) {
            Ok((batch, signed)) => {
                self.metrics.receipt_batches.inc();
                self.metrics.receipt_batch_size.observe(receipts.len() as f64);
                // Gossip only the receipts of jobs still there to be charged: a caller that went away meanwhile
                // released its job, and validators would find no record of it.
                let leaves: Vec<B256> = receipts.iter().map(Receipt::leaf).collect();
                let mut kept = Vec::with_capacity(receipts.len());
                for (i, ((p, r), receipt)) in pending.into_iter().zip(signed).zip(receipts).enumerate() {
                    if p.reply.send(Ok(r)).is_ok() {
                        kept.push((i, receipt));
                    }
                }
                if self.batches.receiver_count() > 0 && !kept.is_empty() {
                    let _ = self.batches.send(Arc::new(SignedBatch { batch, leaves, receipts: kept }));
                }
            }
            Err(e) => {
                for p in pending {
                    let _ = p.reply.send(Err(Error::Signing(e.to_string())));
                }
            }
        }
    }
}

/// Signs what is queued if the leader is dropped during its yield (the queue must never be left without one).
struct LeadOnDrop<'a>(&'a Arc<Inner>);

impl Drop for LeadOnDrop<'_> {
    fn drop(&mut self) {
        let inner = self.0.clone();
        if !inner.lead(ROUNDS_PER_LEADER) {
            tokio::task::spawn_blocking(move || inner.lead(usize::MAX));
        }
    }
}

impl ReceiptSigner {
    /// A signer for `operator` in `domain`.
    pub fn new(operator: FastSigner, domain: Eip712Domain, metrics: PaymentMetrics) -> Self {
        let (batches, _) = broadcast::channel(256);
        Self { inner: Arc::new(Inner { operator, domain, metrics, queue: Mutex::default(), batches }) }
    }

    /// The receipt of one answered job: its proof and the batch it was signed in.
    pub async fn sign(&self, receipt: Receipt) -> Result<ReceiptMsg> {
        let (reply, answer) = oneshot::channel();
        let lead = {
            let mut q = self.inner.queue();
            q.pending.push(Pending { receipt, reply });
            !std::mem::replace(&mut q.signing, true)
        };
        if lead {
            // Let the jobs that finished with this one (an engine batch wakes them together) queue theirs first: one
            // signature for all of them. Alone, the yield returns at once. Cancelled here, the job is gone but the
            // queue still has a leader: the guard signs what is queued.
            let guard = LeadOnDrop(&self.inner);
            tokio::task::yield_now().await;
            std::mem::forget(guard);
        }
        // Synchronous (no await): a cancelled caller cannot stop it half-way and strand the queue.
        if lead && !self.inner.lead(ROUNDS_PER_LEADER) {
            let inner = self.inner.clone();
            tokio::task::spawn_blocking(move || inner.lead(usize::MAX));
        }
        answer.await.map_err(|_| Error::Signing("the receipt signer stopped".into()))?
    }

    /// Signed batches as they are made (for gossip to validators). A slow receiver misses batches, never slows
    /// signing.
    pub fn batches(&self) -> broadcast::Receiver<Arc<SignedBatch>> {
        self.inner.batches.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use alloy::primitives::Address;
    use alloy::signers::local::PrivateKeySigner;

    use super::*;

    use mlbridge_sdk::receipt::example_receipt as receipt;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_jobs_share_signatures_and_every_receipt_verifies() {
        let key = PrivateKeySigner::random();
        let domain = mlbridge_sdk::eip712::domain(31337, Address::repeat_byte(0xcc));
        let metrics = PaymentMetrics::register(&prometheus::Registry::new()).unwrap();
        let signer = ReceiptSigner::new(FastSigner::new(&key), domain.clone(), metrics.clone());
        let mut gossip = signer.batches();
        // A lone job: a batch of one, signed at once.
        let lone = signer.sign(receipt(0)).await.unwrap();
        assert!(lone.verify(&domain) && lone.proof.is_empty() && lone.batch.count == 1);
        // 500 jobs at once: every receipt proves into a batch signed by the operator, in fewer batches than jobs.
        let jobs: Vec<_> = (1..=500)
            .map(|i| {
                tokio::spawn({
                    let s = signer.clone();
                    async move { s.sign(receipt(i)).await.unwrap() }
                })
            })
            .collect();
        let mut roots = std::collections::HashSet::new();
        for (i, j) in jobs.into_iter().enumerate() {
            let r = j.await.unwrap();
            assert_eq!(r.receipt(), receipt(i as u64 + 1), "each job gets its own receipt");
            assert!(r.verify(&domain), "receipt {i} verifies");
            assert!(r.batch.count as usize <= MAX_BATCH_LEAVES);
            roots.insert(r.batch.root);
        }
        assert!(roots.len() < 500, "batches formed: {} signatures for 500 jobs", roots.len());
        assert_eq!(metrics.receipt_batches.get() as usize, roots.len() + 1);
        // The gossip side sees every batch with its receipts in leaf order.
        let first = gossip.recv().await.unwrap();
        assert_eq!(first.receipts, vec![(0, receipt(0))]);
        assert_eq!(first.batch, lone.batch);
    }
}
