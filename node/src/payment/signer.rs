//! The receipt signer (DESIGN.md §3, batched receipts): one operator signature per batch of answered jobs.
//!
//! Answered jobs queue their receipts; a dedicated thread takes the first one waiting, then every other one that
//! arrived meanwhile (up to [`MAX_BATCH_LEAVES`]), builds their Merkle tree and signs its root once. So a lone job
//! is signed at once (no added delay), and under load a batch holds the jobs answered while the previous signature
//! was being made. Each job gets its receipt with its proof and the signed batch; the batch itself goes to the
//! gossip side (receipts for validators travel by batch, not by job).

use std::sync::Arc;

use alloy::sol_types::Eip712Domain;
use mlbridge_sdk::protocol::{BatchMsg, ReceiptMsg};
use mlbridge_sdk::receipt::{MAX_BATCH_LEAVES, Receipt};
use mlbridge_sdk::signer::FastSigner;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::metrics::PaymentMetrics;
use crate::{Error, Result};

/// A signed batch and its receipts in leaf order, for gossip.
#[derive(Debug)]
pub struct SignedBatch {
    /// The signed batch.
    pub batch: BatchMsg,
    /// Its receipts, in leaf order.
    pub receipts: Vec<Receipt>,
}

struct Pending {
    receipt: Receipt,
    reply: oneshot::Sender<Result<ReceiptMsg>>,
}

/// Handle to the signer thread (cloneable); the thread ends when every handle is gone.
#[derive(Clone, Debug)]
pub struct ReceiptSigner {
    queue: mpsc::Sender<Pending>,
    batches: broadcast::Sender<Arc<SignedBatch>>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("job", &self.receipt.jobId).finish()
    }
}

impl ReceiptSigner {
    /// Start the signer thread for `operator` in `domain`.
    pub fn start(operator: FastSigner, domain: Eip712Domain, metrics: PaymentMetrics) -> Self {
        let (queue, mut rx) = mpsc::channel::<Pending>(4 * MAX_BATCH_LEAVES);
        let (batches, _) = broadcast::channel(256);
        let gossip = batches.clone();
        std::thread::Builder::new()
            .name("receipt-signer".into())
            .spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    let mut pending = vec![first];
                    while pending.len() < MAX_BATCH_LEAVES {
                        match rx.try_recv() {
                            Ok(p) => pending.push(p),
                            Err(_) => break,
                        }
                    }
                    // Jobs whose caller went away need no receipt (their charge was released).
                    pending.retain(|p| !p.reply.is_closed());
                    if pending.is_empty() {
                        continue;
                    }
                    let receipts: Vec<Receipt> = pending.iter().map(|p| p.receipt.clone()).collect();
                    let issued_at = receipts.iter().map(|r| r.issuedAt).max().unwrap_or_default();
                    match ReceiptMsg::sign_batch(&receipts, operator.address(), issued_at, &operator, &domain) {
                        Ok((batch, signed)) => {
                            metrics.receipt_batches.inc();
                            metrics.receipt_batch_size.observe(receipts.len() as f64);
                            for (p, r) in pending.into_iter().zip(signed) {
                                let _ = p.reply.send(Ok(r));
                            }
                            if gossip.receiver_count() > 0 {
                                let _ = gossip.send(Arc::new(SignedBatch { batch, receipts }));
                            }
                        }
                        Err(e) => {
                            for p in pending {
                                let _ = p.reply.send(Err(Error::Signing(e.to_string())));
                            }
                        }
                    }
                }
            })
            .expect("spawning the receipt signer thread");
        Self { queue, batches }
    }

    /// The receipt of one answered job: its proof and the batch it was signed in. Waits for the batch's signature.
    pub async fn sign(&self, receipt: Receipt) -> Result<ReceiptMsg> {
        let (reply, rx) = oneshot::channel();
        let stopped = || Error::Signing("the receipt signer stopped".into());
        self.queue.send(Pending { receipt, reply }).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Signed batches as they are made (for gossip to validators). A slow receiver misses batches, never slows
    /// signing.
    pub fn batches(&self) -> broadcast::Receiver<Arc<SignedBatch>> {
        self.batches.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use alloy::primitives::{Address, B256, U256};
    use alloy::signers::local::PrivateKeySigner;

    use super::*;

    fn receipt(i: u64) -> Receipt {
        Receipt {
            jobId: B256::from(U256::from(i)),
            modelId: B256::repeat_byte(1),
            inputHash: B256::repeat_byte(2),
            outputHash: B256::repeat_byte(3),
            units: U256::from(1u64),
            price: U256::from(10u64),
            channelId: B256::repeat_byte(4),
            issuedAt: 1_700_000_000 + i,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_jobs_share_signatures_and_every_receipt_verifies() {
        let key = PrivateKeySigner::random();
        let domain = mlbridge_sdk::eip712::domain(31337, Address::repeat_byte(0xcc));
        let metrics = PaymentMetrics::register(&prometheus::Registry::new()).unwrap();
        let signer = ReceiptSigner::start(FastSigner::new(&key), domain.clone(), metrics.clone());
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
        assert_eq!(first.receipts, vec![receipt(0)]);
        assert_eq!(first.batch, lone.batch);
    }
}
