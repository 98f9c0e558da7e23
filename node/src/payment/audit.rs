//! Inputs and outputs of recent paid jobs, kept for validators (the audit protocol), bounded in time and bytes,
//! and the check that an audit's signer is an active validator in `Staking`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alloy::primitives::{Address, B256};
use alloy::providers::DynProvider;
use mlbridge_sdk::chain::bindings::Staking;
use mlbridge_sdk::protocol::AuditRecord;

/// Who may audit: active validators in `Staking`, asked on chain and remembered for a short while (an unbonding
/// validator loses access within `ttl`).
#[derive(Clone, Debug)]
pub struct Validators {
    staking: Staking::StakingInstance<DynProvider>,
    known: moka::future::Cache<Address, bool>,
}

impl Validators {
    /// Check against the `Staking` contract at `staking`, remembering each answer for `ttl`.
    pub fn new(provider: DynProvider, staking: Address, ttl: Duration) -> Self {
        let known = moka::future::Cache::builder().max_capacity(10_000).time_to_live(ttl).build();
        Self { staking: Staking::new(staking, provider), known }
    }

    /// Whether `account` is an active validator now (an RPC failure is an error, never a yes).
    pub async fn is_active(&self, account: Address) -> crate::Result<bool> {
        if let Some(v) = self.known.get(&account).await {
            return Ok(v);
        }
        let active = self
            .staking
            .isActiveValidator(account)
            .call()
            .await
            .map_err(|e| crate::Error::Chain(mlbridge_sdk::Error::Rpc(e.to_string())))?;
        self.known.insert(account, active).await;
        Ok(active)
    }
}

/// Recent job records, evicted oldest first by age (`retention`) and total size (`max_bytes`). Records leave in the
/// order they came (a cache's admission policy could refuse a new record while the store is full, and an audit of a
/// just-answered job must find it); inserting and finding are O(1).
#[derive(Clone, Debug)]
pub struct AuditStore {
    inner: Arc<Mutex<Window>>,
    retention: Duration,
    max_bytes: u64,
}

#[derive(Debug, Default)]
struct Window {
    by_job: HashMap<B256, (Instant, Arc<AuditRecord>)>,
    /// Records in the order they came, with when and their weight.
    order: VecDeque<(Instant, u64, Arc<AuditRecord>)>,
    bytes: u64,
}

fn weight(r: &AuditRecord) -> u64 {
    let tensors: usize = r.inputs.iter().chain(&r.outputs).map(|t| t.byte_len() + t.name().len() + 32).sum();
    let texts: usize = r.texts.iter().map(String::len).sum::<usize>()
        + r.generation.as_ref().map_or(0, |g| {
            4 * (g.prompt.len() + g.output.len()) + g.params.stop.iter().map(String::len).sum::<usize>()
        });
    (tensors + texts + 256) as u64
}

impl AuditStore {
    /// A store keeping records for `retention`, at most `max_bytes` in total.
    pub fn new(retention: Duration, max_bytes: u64) -> Self {
        Self { inner: Arc::default(), retention, max_bytes }
    }

    fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keep a job's record (a record larger than the whole store is not kept).
    pub fn insert(&self, record: AuditRecord) {
        let (now, w) = (Instant::now(), weight(&record));
        if w > self.max_bytes {
            tracing::warn!(target: "node::payment", job = %record.receipt.job_id, bytes = w, max = self.max_bytes,
                "a job's record is larger than the audit store; it is not kept (raise payment.audit_retention_mib)");
            return;
        }
        let record = Arc::new(record);
        let mut window = self.window();
        window.by_job.insert(record.receipt.job_id, (now, record.clone()));
        window.order.push_back((now, w, record));
        window.bytes += w;
        while let Some((at, w, oldest)) = window.order.front() {
            if window.bytes <= self.max_bytes && now.duration_since(*at) <= self.retention {
                break;
            }
            let (w, job) = (*w, oldest.receipt.job_id);
            // Only this record's own entry (a record kept again under the same id replaced it).
            if window.by_job.get(&job).is_some_and(|(_, r)| Arc::ptr_eq(r, oldest)) {
                window.by_job.remove(&job);
            }
            window.bytes -= w;
            window.order.pop_front();
        }
    }

    /// A job's record, if still retained.
    pub fn get(&self, job: &B256) -> Option<Arc<AuditRecord>> {
        let (at, record) = self.window().by_job.get(job).cloned()?;
        (at.elapsed() <= self.retention).then_some(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlbridge_sdk::protocol::{ModelRef, WIRE_VERSION};

    fn record(i: u64, floats: usize) -> AuditRecord {
        let key = alloy::signers::local::PrivateKeySigner::from_bytes(&B256::repeat_byte(7)).unwrap();
        let domain = alloy::sol_types::Eip712Domain::default();
        let receipt = mlbridge_sdk::protocol::ReceiptMsg::sign_single(
            &mlbridge_sdk::receipt::example_receipt(i),
            key.address(),
            &key,
            &domain,
        )
        .unwrap();
        let data = mlbridge_sdk::TensorData::Fp32(vec![0.5; floats]);
        AuditRecord {
            version: WIRE_VERSION,
            receipt,
            model: ModelRef { name: "m".into(), version: Some(1), id: None },
            inputs: vec![mlbridge_sdk::Tensor::new("x", vec![floats as i64], data).unwrap()],
            texts: Vec::new(),
            outputs: Vec::new(),
            generation: None,
        }
    }

    #[test]
    fn records_leave_oldest_first_by_size_and_age() {
        let one = weight(&record(0, 100));
        let store = AuditStore::new(Duration::from_secs(60), 3 * one);
        let ids: Vec<B256> = (0..5).map(|i| record(i, 100).receipt.job_id).collect();
        for i in 0..5 {
            store.insert(record(i, 100));
        }
        // Full at three: the two oldest left, the newest is always kept.
        let kept: Vec<bool> = ids.iter().map(|id| store.get(id).is_some()).collect();
        assert_eq!(kept, [false, false, true, true, true]);
        assert!(store.window().bytes <= 3 * one);
        // A record larger than the whole store is not kept and evicts nothing.
        store.insert(record(9, 10_000));
        assert!(store.get(&record(9, 10_000).receipt.job_id).is_none());
        assert!(store.get(&ids[4]).is_some());

        let short = AuditStore::new(Duration::from_millis(300), u64::MAX);
        short.insert(record(1, 10));
        assert!(short.get(&ids[1]).is_some());
        std::thread::sleep(Duration::from_millis(600));
        assert!(short.get(&ids[1]).is_none(), "past the retention");
        short.insert(record(2, 10));
        assert_eq!(short.window().order.len(), 1, "the expired record left when the next came");
    }
}
