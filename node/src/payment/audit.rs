//! Inputs and outputs of recent paid jobs, kept for validators (the audit protocol), bounded in time and bytes.

use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::B256;
use mlbridge_sdk::protocol::AuditRecord;
use moka::sync::Cache;

/// Recent job records, evicted by age (`retention`) and total size (`max_bytes`).
#[derive(Clone, Debug)]
pub struct AuditStore {
    cache: Cache<B256, Arc<AuditRecord>>,
}

fn weight(r: &AuditRecord) -> u32 {
    let tensors: usize = r.inputs.iter().chain(&r.outputs).map(|t| t.byte_len() + t.name().len() + 32).sum();
    let texts: usize = r.texts.iter().map(String::len).sum();
    u32::try_from(tensors + texts + 256).unwrap_or(u32::MAX)
}

impl AuditStore {
    /// A store keeping records for `retention`, at most `max_bytes` in total.
    pub fn new(retention: Duration, max_bytes: u64) -> Self {
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_, r: &Arc<AuditRecord>| weight(r))
            .time_to_live(retention)
            .build();
        Self { cache }
    }

    /// Keep a job's record.
    pub fn insert(&self, record: AuditRecord) {
        self.cache.insert(record.receipt.job_id, Arc::new(record));
    }

    /// A job's record, if still retained.
    pub fn get(&self, job: &B256) -> Option<Arc<AuditRecord>> {
        self.cache.get(job)
    }
}
