//! Node configuration: a TOML file (`--config`), overridden by flags and `MLBRIDGE_*` environment variables.
//! Every field has a default, so an empty file (or none) is a valid configuration.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{Error, Result};

/// Everything the node needs to run.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Model repository folder.
    pub model_repository: PathBuf,
    /// ONNX Runtime library (default: `$ORT_DYLIB_PATH`, then the project's `.venv`).
    pub onnxruntime: Option<PathBuf>,
    /// Public HTTP API.
    pub http: HttpConfig,
    /// Metrics endpoint.
    pub metrics: MetricsConfig,
    /// Batching, queues, threads.
    pub inference: InferenceConfig,
    /// Result cache.
    pub cache: CacheConfig,
    /// Peer-to-peer network.
    pub p2p: P2pConfig,
    /// Operator key (hex secp256k1), for devnets only: signs adverts and receipts. An ephemeral key is used when
    /// neither this nor `operator_keystore` is set.
    pub operator_key: Option<String>,
    /// The operator key in an encrypted Ethereum keystore file (`mlbridge key new`): how real nodes hold it.
    pub operator_keystore: Option<PathBuf>,
    /// The keystore's password file (first line); else `$MLBRIDGE_KEYSTORE_PASSWORD`, else a prompt.
    pub operator_password_file: Option<PathBuf>,
    /// Payments: vouchers, ledger, settlement (off = every job is free).
    pub payment: PaymentConfig,
}

/// Payment settings (DESIGN.md §3, §5).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PaymentConfig {
    /// Charge for jobs (the models' `price_wei`); needs `deployment` and an operator key.
    pub enabled: bool,
    /// Chain RPC (HTTP).
    pub rpc_url: String,
    /// The contracts' addresses file (`contracts/deployments/<chainId>.json`).
    pub deployment: Option<PathBuf>,
    /// Ledger folder (sled).
    pub ledger: PathBuf,
    /// Confirmations a channel (and a redemption) needs.
    pub confirmations: u64,
    /// Chain polling interval, milliseconds.
    pub poll_interval_ms: u64,
    /// Charges of jobs paid from credit (no new voucher) are flushed to the ledger within this many milliseconds,
    /// without the answer waiting; a crash loses at most these charges (the vouchers that paid them are kept).
    pub commit_interval_ms: u64,
    /// Refuse work on channels whose redemption deadline is this close; settle them at twice this.
    pub expiry_margin_secs: u64,
    /// Seconds between settlement rounds.
    pub settle_interval_secs: f64,
    /// Redeem a channel when its unredeemed value is this many times the gas cost of redeeming it.
    pub settle_gas_multiple: u64,
    /// Gas of one channel's redemption inside `redeemMany` (for that threshold).
    pub redeem_gas: u64,
    /// Vouchers per redemption transaction.
    pub max_batch: usize,
    /// Longest wait for a redemption's confirmations before retrying, seconds.
    pub confirm_timeout_secs: u64,
    /// Re-send a redemption neither mined nor in the mempool after this many seconds.
    pub resubmit_after_secs: u64,
    /// Longest time spent settling at shutdown, seconds.
    pub shutdown_settle_secs: u64,
    /// Serve HTTP requests from 127.0.0.1 / ::1 free (operators' own use).
    pub free_localhost: bool,
    /// Serve HTTP requests from these addresses free.
    pub free_allowlist: Vec<std::net::IpAddr>,
    /// Keep inputs and outputs of paid jobs for validators this many hours.
    pub audit_retention_hours: f64,
    /// ... and at most this many MiB of them.
    pub audit_retention_mib: u64,
    /// TEST ONLY, never in production: add this to every FP32 output of paid p2p jobs, receipt included (a cheating
    /// node, for validator tests and demos). Validators catch it and the node is slashed. 0 = off.
    pub testing_corrupt_outputs: f32,
}

impl Default for PaymentConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            rpc_url: "http://127.0.0.1:8545".into(),
            deployment: None,
            ledger: PathBuf::from("data/ledger"),
            confirmations: 3,
            poll_interval_ms: 500,
            commit_interval_ms: 50,
            expiry_margin_secs: 600,
            settle_interval_secs: 10.0,
            settle_gas_multiple: 20,
            redeem_gas: 16_000,
            max_batch: 100,
            confirm_timeout_secs: 300,
            resubmit_after_secs: 30,
            shutdown_settle_secs: 30,
            free_localhost: false,
            free_allowlist: Vec::new(),
            audit_retention_hours: 24.0,
            audit_retention_mib: 256,
            testing_corrupt_outputs: 0.0,
        }
    }
}

/// Peer-to-peer settings.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct P2pConfig {
    /// Join the network at all.
    pub enabled: bool,
    /// Listen multiaddrs (the p2p port listens on every interface by default).
    pub listen: Vec<String>,
    /// Bootstrap peers (`/ip4/../tcp/../p2p/<peer id>`).
    pub bootstrap: Vec<String>,
    /// mDNS discovery on the local network.
    pub mdns: bool,
    /// Seconds between adverts.
    pub advert_interval_secs: f64,
    /// Concurrent inbound requests one peer may have in flight (a generation is one until its end); beyond it:
    /// "overloaded".
    pub max_inbound_per_peer: usize,
    /// Inbound requests per second one peer may send (burst: twice that); beyond it: "overloaded".
    pub max_requests_per_sec_per_peer: f64,
    /// Invalid messages a peer may send before it is banned.
    pub max_invalid_messages: u32,
    /// PeerIds allowed to fetch audit records (clients' inputs and outputs); nobody else is answered.
    pub audit_allowlist: Vec<String>,
    /// Audit requests per second one allowed peer may send (burst: twice that); beyond it: "overloaded".
    pub max_audits_per_sec_per_peer: f64,
    /// Connections accepted from others at once.
    pub max_incoming_connections: u32,
    /// Connections one peer may hold at once.
    pub max_connections_per_peer: u32,
    /// Request streams one connection may have open at once.
    pub max_streams_per_connection: usize,
    /// MiB of inbound requests being read at once, across all peers (beyond: "overloaded").
    pub inbound_budget_mib: usize,
    /// Extra delay added to every inbound request (simulates a distant node in tests and demos; 0 = none).
    pub simulated_latency_ms: u64,
    /// File holding the node's libp2p identity (created if missing); ephemeral when unset.
    pub identity_file: Option<PathBuf>,
}

impl Default for P2pConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: vec!["/ip4/0.0.0.0/tcp/4001".into(), "/ip4/0.0.0.0/udp/4001/quic-v1".into()],
            bootstrap: Vec::new(),
            mdns: true,
            advert_interval_secs: 5.0,
            max_inbound_per_peer: 64,
            max_requests_per_sec_per_peer: 2_000.0,
            max_invalid_messages: 5,
            audit_allowlist: Vec::new(),
            max_audits_per_sec_per_peer: 10.0,
            max_incoming_connections: 512,
            max_connections_per_peer: 4,
            max_streams_per_connection: 64,
            inbound_budget_mib: 256,
            simulated_latency_ms: 0,
            identity_file: None,
        }
    }
}

/// Public HTTP API settings.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address (127.0.0.1 by default: expose it on purpose).
    pub listen: SocketAddr,
    /// Largest request body accepted, bytes.
    pub max_body_bytes: usize,
    /// Longest a request may take, body upload included (a slow client is cut off with 408), seconds.
    pub request_timeout_secs: f64,
    /// Requests served at once; beyond it new ones get 503 + Retry-After at once.
    pub max_concurrent_requests: usize,
}

/// Metrics endpoint settings.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Listen address of `/metrics`.
    pub listen: SocketAddr,
}

/// Inference settings.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InferenceConfig {
    /// Dynamic batching.
    pub batching: bool,
    /// Requests queued per model before the node answers "overloaded".
    pub queue_capacity: usize,
    /// Override every model's intra-op threads.
    pub threads: Option<usize>,
    /// Texts one embeddings request may hold; more get a 4xx / typed error before any work or payment.
    pub max_texts_per_request: usize,
    /// Bytes one text may hold.
    pub max_text_bytes: usize,
}

/// Result cache settings.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Cache results at all.
    pub enabled: bool,
    /// In-memory capacity, MiB.
    pub capacity_mib: u64,
    /// Entry lifetime, seconds.
    pub ttl_secs: u64,
    /// Use Redis at this URL instead of memory (a cache shared by a fleet).
    pub redis_url: Option<String>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            model_repository: PathBuf::from("models"),
            onnxruntime: None,
            http: HttpConfig::default(),
            metrics: MetricsConfig::default(),
            inference: InferenceConfig::default(),
            cache: CacheConfig::default(),
            p2p: P2pConfig::default(),
            operator_key: None,
            operator_keystore: None,
            operator_password_file: None,
            payment: PaymentConfig::default(),
        }
    }
}

impl NodeConfig {
    /// The operator key: from `operator_keystore` (its password from `operator_password_file`, the environment or a
    /// prompt), else `operator_key` (devnets); `None` when neither is set.
    pub fn operator_signer(&self) -> Result<Option<alloy::signers::local::PrivateKeySigner>> {
        let fail = |reason: String| Error::Config { path: "operator_key".into(), reason };
        match (&self.operator_keystore, &self.operator_key) {
            (Some(path), _) => {
                let source = mlbridge_sdk::keys::PasswordSource::from_file(self.operator_password_file.as_deref());
                mlbridge_sdk::keys::load(path, &source).map(Some).map_err(|e| fail(e.to_string()))
            }
            (None, Some(hex)) => hex
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| fail("not a secp256k1 private key in hex (64 hex digits)".into())),
            (None, None) => Ok(None),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            max_body_bytes: 4 << 20,
            request_timeout_secs: 30.0,
            max_concurrent_requests: 1024,
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], 9100)) }
    }
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self {
            batching: true,
            queue_capacity: 256,
            threads: None,
            max_texts_per_request: 256,
            max_text_bytes: 16 << 10,
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self { enabled: true, capacity_mib: 64, ttl_secs: 300, redis_url: None }
    }
}

impl NodeConfig {
    /// Read a TOML config file.
    pub fn load(path: &Path) -> Result<Self> {
        let err = |reason: String| Error::Config { path: path.to_owned(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read it: {e}")))?;
        toml::from_str(&text).map_err(|e| err(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubernetes_config_is_one_this_node_reads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s/base/node.toml");
        let c = NodeConfig::load(&path).unwrap();
        // Every pod pays and is paid, keeps its ledger on its volume, listens where the manifests expose it, signs
        // with the keystore its init container copied (never a hex key), and runs as many ONNX Runtime threads as
        // it requests cores. (The Redis URL, with its password, comes from the environment.)
        assert!(c.payment.enabled && c.cache.enabled && c.cache.redis_url.is_none());
        assert!(c.payment.ledger.starts_with("/var/lib/mlbridge/data"));
        assert_eq!((c.http.listen.port(), c.metrics.listen.port()), (8000, 9100));
        assert_eq!(c.p2p.listen, vec!["/ip4/0.0.0.0/tcp/4001".to_string()]);
        assert!(c.p2p.bootstrap.iter().all(|a| a.parse::<libp2p::Multiaddr>().is_ok()) && !c.p2p.bootstrap.is_empty());
        assert!(c.operator_key.is_none() && c.operator_keystore.is_some() && c.operator_password_file.is_some());
        assert_eq!(c.inference.threads, Some(2));
    }

    #[test]
    fn the_operator_key_comes_from_a_keystore_or_a_devnet_hex_key() {
        let dir = tempfile::tempdir().unwrap();
        let (keystore, pw) = (dir.path().join("operator.json"), dir.path().join("pw"));
        std::fs::write(&pw, "pw\n").unwrap();
        let made = mlbridge_sdk::keys::create(&keystore, "pw").unwrap();
        let toml = format!("operator_keystore = {keystore:?}\noperator_password_file = {pw:?}\n");
        std::fs::write(dir.path().join("node.toml"), toml).unwrap();
        let c = NodeConfig::load(&dir.path().join("node.toml")).unwrap();
        assert_eq!(c.operator_signer().unwrap().map(|s| s.address()), Some(made.address()));
        let dev = NodeConfig {
            operator_key: Some("0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80".into()),
            ..NodeConfig::default()
        };
        assert!(dev.operator_signer().unwrap().is_some());
        assert!(NodeConfig::default().operator_signer().unwrap().is_none());
        std::fs::write(&pw, "wrong\n").unwrap();
        assert!(c.operator_signer().unwrap_err().to_string().contains("wrong password"));
    }

    #[test]
    fn empty_file_is_all_defaults_and_unknown_keys_fail() {
        assert_eq!(toml::from_str::<NodeConfig>("").unwrap(), NodeConfig::default());
        let c: NodeConfig = toml::from_str("[cache]\nttl_secs = 5\n[http]\nlisten = \"0.0.0.0:80\"").unwrap();
        assert_eq!(c.cache.ttl_secs, 5);
        assert!(c.cache.enabled);
        assert_eq!(c.http.listen.port(), 80);
        assert!(toml::from_str::<NodeConfig>("[cache]\nttl = 5").is_err());
    }
}
