//! The jobs a validator re-executed since its last attestation, and the leaves behind each attestation's root.
//!
//! `ValidatorRewards.attest(epoch, jobsChecked, root)` takes a Merkle root over the checked jobs; the leaf of a job
//! is `keccak256(abi.encode(jobId, outputHash, verdict))` (verdict 1 = agrees, 2 = mismatch), in the receipts' tree
//! layout (`mlbridge_sdk::receipt::MerkleTree`). The leaves are written to `<data_dir>/attestations/<epoch>.json`
//! before the transaction is sent, so every root on chain can be opened later.

use std::path::PathBuf;

use alloy::primitives::{Address, B256, keccak256};
use alloy::sol_types::SolValue;
use mlbridge_sdk::receipt::MerkleTree;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Jobs kept before an attestation at most; older ones are dropped from the next root (and counted).
pub const MAX_PENDING: usize = 1_000_000;

/// One re-executed job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckedJob {
    /// The node's job id.
    pub job_id: B256,
    /// The node operator.
    pub node: Address,
    /// The output hash the node's receipt claims.
    pub output_hash: B256,
    /// 1 = agrees within tolerance, 2 = mismatch.
    pub verdict: u8,
}

impl CheckedJob {
    /// Its leaf in the attestation's tree.
    pub fn leaf(&self) -> B256 {
        keccak256((self.job_id, self.output_hash, alloy::primitives::U256::from(self.verdict)).abi_encode())
    }
}

/// What one attestation covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attestation {
    /// The epoch.
    pub epoch: u64,
    /// The Merkle root (zero when no job was checked).
    pub root: B256,
    /// The jobs, in leaf order.
    pub jobs: Vec<CheckedJob>,
}

/// Checked jobs waiting for the next attestation.
#[derive(Debug)]
pub struct CheckLog {
    dir: PathBuf,
    pending: Vec<CheckedJob>,
}

impl CheckLog {
    /// A log writing attestations under `data_dir/attestations`.
    pub fn new(data_dir: &std::path::Path) -> Self {
        Self { dir: data_dir.join("attestations"), pending: Vec::new() }
    }

    /// Record a checked job.
    pub fn push(&mut self, job: CheckedJob) {
        if self.pending.len() < MAX_PENDING {
            self.pending.push(job);
        }
    }

    /// Jobs waiting.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The attestation of everything checked so far for `epoch`, its leaves written to disk.
    pub fn prepare(&self, epoch: u64) -> Result<Attestation> {
        let root = match MerkleTree::new(self.pending.iter().map(CheckedJob::leaf).collect()) {
            Ok(tree) => tree.root(),
            Err(_) => B256::ZERO,
        };
        let attestation = Attestation { epoch, root, jobs: self.pending.clone() };
        let path = self.dir.join(format!("{epoch}.json"));
        let io = |e: std::io::Error| Error::Io { path: path.clone(), reason: e.to_string() };
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        let json = serde_json::to_vec_pretty(&attestation)
            .map_err(|e| Error::Io { path: path.clone(), reason: e.to_string() })?;
        std::fs::write(&path, json).map_err(io)?;
        Ok(attestation)
    }

    /// The attestation was mined: its jobs are done.
    pub fn attested(&mut self, a: &Attestation) {
        let n = a.jobs.len().min(self.pending.len());
        self.pending.drain(..n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attestations_keep_their_leaves_and_only_drop_what_they_covered() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = CheckLog::new(dir.path());
        let job = |i: u8, verdict| CheckedJob {
            job_id: B256::repeat_byte(i),
            node: Address::ZERO,
            output_hash: B256::repeat_byte(i + 1),
            verdict,
        };
        assert_eq!(log.prepare(1).unwrap().root, B256::ZERO);
        log.push(job(1, 1));
        log.push(job(2, 2));
        let a = log.prepare(2).unwrap();
        assert_eq!(a.root, MerkleTree::new(vec![job(1, 1).leaf(), job(2, 2).leaf()]).unwrap().root());
        assert_ne!(job(1, 1).leaf(), job(1, 2).leaf(), "the verdict is in the leaf");
        log.push(job(3, 1)); // checked while the attestation was being mined
        log.attested(&a);
        assert_eq!(log.pending(), 1);
        let saved: Attestation =
            serde_json::from_slice(&std::fs::read(dir.path().join("attestations/2.json")).unwrap()).unwrap();
        assert_eq!(saved, a);
    }
}
