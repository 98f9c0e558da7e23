//! A real anvil chain with the contracts deployed, blocks mined every 150 ms (pausable), and paid-node and payer
//! settings on top of it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use alloy::node_bindings::{Anvil, AnvilInstance};
use alloy::primitives::{Address, U256};
use alloy::providers::ext::AnvilApi;
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use mlbridge_node::config::NodeConfig;
use mlbridge_sdk::chain::{DeployParams, Deployment, deploy};
use mlbridge_sdk::payment::{Payer, PayerConfig, PaymentPolicy};
pub use mlbridge_testkit::Proxy;

pub const ETHER: u128 = 1_000_000_000_000_000_000;

pub struct Chain {
    pub anvil: AnvilInstance,
    pub deployment: Deployment,
    pub deployment_file: PathBuf,
    mining: Arc<AtomicBool>,
    _dir: tempfile::TempDir,
}

impl Chain {
    /// Anvil (automine) plus an empty block every 150 ms, so confirmations come quickly.
    pub async fn start() -> Self {
        let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil");
        let anvil = Anvil::at(bin).arg("--host").arg("127.0.0.1").try_spawn().expect("anvil (run scripts/setup)");
        let deployer = ProviderBuilder::new()
            .wallet(PrivateKeySigner::from(anvil.keys()[0].clone()))
            .connect_http(anvil.endpoint().parse().unwrap())
            .erased();
        let deployment = deploy(&deployer, &DeployParams::default()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let deployment_file = dir.path().join("deployment.json");
        deployment.save(&deployment_file).unwrap();
        let mining = Arc::new(AtomicBool::new(true));
        let (p, on) = (provider_for(&anvil.endpoint()), mining.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(150)).await;
                if on.load(Ordering::SeqCst) {
                    let _ = p.anvil_mine(Some(1), None).await;
                }
            }
        });
        Self { anvil, deployment, deployment_file, mining, _dir: dir }
    }

    pub fn url(&self) -> String {
        self.anvil.endpoint()
    }

    pub fn key(&self, i: usize) -> PrivateKeySigner {
        self.anvil.keys()[i].clone().into()
    }

    pub fn key_hex(&self, i: usize) -> String {
        hex::encode(self.anvil.keys()[i].to_bytes())
    }

    pub fn provider(&self) -> DynProvider {
        provider_for(&self.url())
    }

    pub fn wallet(&self, i: usize) -> DynProvider {
        ProviderBuilder::new().wallet(self.key(i)).connect_http(self.url().parse().unwrap()).erased()
    }

    /// Stop or restart the background miner (transactions are still mined one block each).
    pub fn mining(&self, on: bool) {
        self.mining.store(on, Ordering::SeqCst);
    }

    pub async fn balance(&self, a: Address) -> U256 {
        self.provider().get_balance(a).await.unwrap()
    }
}

fn provider_for(url: &str) -> DynProvider {
    ProviderBuilder::new().connect_http(url.parse().unwrap()).erased()
}

/// Paid mode against `rpc_url` with operator key `operator`, ledger in `ledger`; settlement only when asked.
pub fn paid(c: &mut NodeConfig, chain: &Chain, rpc_url: &str, operator: usize, ledger: &Path) {
    c.operator_key = Some(chain.key_hex(operator));
    c.cache.enabled = false;
    c.p2p.advert_interval_secs = 0.3;
    let p = &mut c.payment;
    p.enabled = true;
    p.rpc_url = rpc_url.to_owned();
    p.deployment = Some(chain.deployment_file.clone());
    p.ledger = ledger.join("ledger"); // the admin token file goes beside it, inside the test's folder
    p.poll_interval_ms = 50;
    p.settle_interval_secs = 3600.0;
    p.confirm_timeout_secs = 60;
    p.resubmit_after_secs = 2;
}

/// A payer with key `key`, its store in `store`, allowed to deposit up to `max_spend` wei by itself.
pub async fn payer(chain: &Chain, key: usize, store: &Path, max_spend: u128) -> Arc<Payer> {
    let config = PayerConfig {
        rpc_url: chain.url(),
        deployment: chain.deployment,
        store: store.to_owned(),
        policy: PaymentPolicy {
            max_spend: U256::from(max_spend),
            deposit: U256::from(ETHER / 1000),
            ..PaymentPolicy::default()
        },
        confirmations: 3,
        poll_interval: Duration::from_millis(50),
    };
    Arc::new(Payer::connect(chain.key(key), config).await.unwrap())
}
