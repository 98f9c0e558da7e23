//! The validator's settings: a `#[serde(default)]` TOML file (`--config`), with command-line flags on top.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{Error, Result};

/// Everything `mlbridge-validator` needs.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ValidatorConfig {
    /// Validator private key in hex (devnets only: a key on a command line or in a file is readable by others).
    pub key: Option<String>,
    /// Encrypted Ethereum keystore (JSON) holding the validator key.
    pub keystore: Option<PathBuf>,
    /// File holding the keystore's password (first line).
    pub password_file: Option<PathBuf>,
    /// Chain RPC URL.
    pub rpc_url: String,
    /// The contracts' addresses file (`contracts/deployments/<chainId>.json`).
    pub deployment: Option<PathBuf>,
    /// Confirmations every transaction is tracked to.
    pub confirmations: u64,
    /// Chain polling interval, milliseconds.
    pub poll_interval_ms: u64,
    /// The validator's model repository (the same layout and files as a node's).
    pub model_repository: PathBuf,
    /// ONNX Runtime library (default: `$ORT_DYLIB_PATH`, else the project's `.venv`).
    pub onnxruntime: Option<PathBuf>,
    /// Where the validator keeps its sampling secret and the leaves of its attestations.
    pub data_dir: PathBuf,
    /// Sampling.
    pub sampling: SamplingConfig,
    /// Audits and re-execution.
    pub audit: AuditConfig,
    /// Attestations, votes and claims.
    pub duties: DutiesConfig,
    /// Peer-to-peer settings.
    pub p2p: P2pConfig,
    /// Prometheus metrics.
    pub metrics: MetricsConfig,
    /// TEST ONLY, never in production: challenge every sampled receipt as if it were wrong (a lying validator, for
    /// tests and demos). Its disputes fail and it loses its bonds.
    pub testing_challenge_honest: bool,
}

impl Default for ValidatorConfig {
    fn default() -> Self {
        Self {
            key: None,
            keystore: None,
            password_file: None,
            rpc_url: "http://127.0.0.1:8545".into(),
            deployment: None,
            confirmations: 3,
            poll_interval_ms: 1000,
            model_repository: PathBuf::from("models"),
            onnxruntime: None,
            data_dir: PathBuf::from("validator-data"),
            sampling: SamplingConfig::default(),
            audit: AuditConfig::default(),
            duties: DutiesConfig::default(),
            p2p: P2pConfig::default(),
            metrics: MetricsConfig::default(),
            testing_challenge_honest: false,
        }
    }
}

/// Which receipts get checked.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingConfig {
    /// Share of an established, unsuspected node's receipts re-executed (0..=1).
    pub rate: f64,
    /// Share for a node's first `new_node_receipts` receipts.
    pub new_node_rate: f64,
    /// How many receipts a node is "new" for.
    pub new_node_receipts: u64,
    /// Share for a suspected node (refused or stalled an audit, served a record that does not match its receipt,
    /// or was caught cheating).
    pub suspect_rate: f64,
    /// Most receipts waiting to be audited at once, a quarter of that per node; beyond it new samples are dropped
    /// (and counted).
    pub max_pending: usize,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self { rate: 0.05, new_node_rate: 0.5, new_node_receipts: 20, suspect_rate: 0.5, max_pending: 256 }
    }
}

/// Fetching and re-executing jobs.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Longest wait for a node's audit answer, seconds (beyond it the node is marked suspicious).
    pub timeout_secs: f64,
    /// Audits (fetch + re-execution) in progress at once.
    pub concurrency: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self { timeout_secs: 10.0, concurrency: 2 }
    }
}

/// On-chain duties.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DutiesConfig {
    /// Attest once this share of the epoch's blocks has passed (0..1): late enough to cover the epoch's checks,
    /// early enough to be mined within it.
    pub attest_at: f64,
    /// Claim rewards when at least this many finished epochs are unclaimed.
    pub claim_every_epochs: u64,
    /// Epochs walked per claim transaction.
    pub claim_max_epochs: u64,
    /// How long to wait for a challenger's gossiped evidence before auditing the accused node directly, seconds.
    pub evidence_wait_secs: f64,
}

impl Default for DutiesConfig {
    fn default() -> Self {
        Self { attest_at: 0.5, claim_every_epochs: 1, claim_max_epochs: 50, evidence_wait_secs: 5.0 }
    }
}

/// Peer-to-peer settings.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct P2pConfig {
    /// Listen multiaddrs.
    pub listen: Vec<String>,
    /// Bootstrap peers (nodes and other validators, with `/p2p/<id>`).
    pub bootstrap: Vec<String>,
    /// mDNS discovery on the local network.
    pub mdns: bool,
    /// File holding the validator's libp2p identity (created if missing); ephemeral when unset.
    pub identity_file: Option<PathBuf>,
}

impl Default for P2pConfig {
    fn default() -> Self {
        Self { listen: vec!["/ip4/0.0.0.0/tcp/4101".into()], bootstrap: Vec::new(), mdns: true, identity_file: None }
    }
}

/// Prometheus metrics endpoint.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `/metrics` here (`None`: not served).
    pub listen: Option<SocketAddr>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { listen: Some(SocketAddr::from(([127, 0, 0, 1], 9200))) }
    }
}

impl ValidatorConfig {
    /// Read a TOML config file.
    pub fn load(path: &Path) -> Result<Self> {
        let fail = |reason: String| Error::Config { path: path.to_owned(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
        let config: Self = toml::from_str(&text).map_err(|e| fail(e.to_string()))?;
        config.check().map_err(fail)?;
        Ok(config)
    }

    /// Check values a file or flag may get wrong.
    pub fn check(&self) -> std::result::Result<(), String> {
        let s = &self.sampling;
        for (name, v) in [("rate", s.rate), ("new_node_rate", s.new_node_rate), ("suspect_rate", s.suspect_rate)] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("sampling.{name} must be between 0 and 1, not {v}"));
            }
        }
        if !(0.0..1.0).contains(&self.duties.attest_at) {
            return Err(format!("duties.attest_at must be in [0, 1), not {}", self.duties.attest_at));
        }
        if self.audit.concurrency == 0 || self.duties.claim_max_epochs == 0 {
            return Err("audit.concurrency and duties.claim_max_epochs must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubernetes_config_is_one_this_validator_reads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s/base/validator.toml");
        let c = ValidatorConfig::load(&path).unwrap();
        assert!(c.key.is_none() && c.keystore.is_some() && c.password_file.is_some());
        assert!(c.data_dir.starts_with("/var/lib/mlbridge/data"));
        assert_eq!(c.metrics.listen.map(|a| a.port()), Some(9100));
    }

    #[test]
    fn a_file_overrides_defaults_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.toml");
        std::fs::write(&path, "rpc_url = \"http://x:1\"\n[sampling]\nrate = 0.2\n").unwrap();
        let c = ValidatorConfig::load(&path).unwrap();
        assert_eq!((c.rpc_url.as_str(), c.sampling.rate, c.confirmations), ("http://x:1", 0.2, 3));
        std::fs::write(&path, "[sampling]\nrate = 2.0\n").unwrap();
        assert!(ValidatorConfig::load(&path).unwrap_err().to_string().contains("between 0 and 1"));
        std::fs::write(&path, "unknown = 1\n").unwrap();
        assert!(ValidatorConfig::load(&path).is_err());
    }
}
