//! Inputs and outputs of recent paid jobs, kept for validators (the audit protocol), bounded in time and bytes,
//! and the check that an audit's signer is an active validator in `Staking`.

use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::{Address, B256};
use alloy::providers::DynProvider;
use mlbridge_sdk::chain::bindings::Staking;
use mlbridge_sdk::protocol::AuditRecord;
use moka::sync::Cache;

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
