//! A chain with short epochs and voting periods, registered paid nodes, staked validators and a paying client.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use alloy::node_bindings::{Anvil, AnvilInstance};
use alloy::primitives::{Address, Bytes, U256};
use alloy::providers::ext::AnvilApi;
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use mlbridge_node::config::NodeConfig;
use mlbridge_node::server::{RunningNode, start};
use mlbridge_sdk::chain::bindings::Staking;
use mlbridge_sdk::chain::{DeployParams, Deployment, deploy};
use mlbridge_sdk::client::{Client, ClientConfig, Strategy};
use mlbridge_sdk::net::NetConfig;
use mlbridge_sdk::payment::{Payer, PayerConfig, PaymentPolicy};
use mlbridge_sdk::{Tensor, TensorData};
use mlbridge_validator::RunningValidator;
use mlbridge_validator::config::ValidatorConfig;

pub const ETHER: u128 = 1_000_000_000_000_000_000;
/// Blocks per epoch (a block every 150 ms: about 3 s).
pub const EPOCH: u64 = 20;
/// Seconds a dispute is open for votes.
pub const VOTING: u64 = 60;

pub struct Chain {
    pub anvil: AnvilInstance,
    pub deployment: Deployment,
    pub deployment_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Chain {
    pub async fn start() -> Self {
        let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil");
        let anvil = Anvil::at(bin).arg("--host").arg("127.0.0.1").try_spawn().expect("anvil (run scripts/setup)");
        let deployer = ProviderBuilder::new()
            .wallet(PrivateKeySigner::from(anvil.keys()[0].clone()))
            .connect_http(anvil.endpoint().parse().unwrap())
            .erased();
        let params = DeployParams {
            epoch_length: U256::from(EPOCH),
            voting_period: U256::from(VOTING),
            reveal_window: U256::from(600u64),
            audit_window: U256::from(3600u64),
            min_stake_age_blocks: U256::from(5u64),
            ..DeployParams::default()
        };
        let deployment = deploy(&deployer, &params).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let deployment_file = dir.path().join("deployment.json");
        deployment.save(&deployment_file).unwrap();
        let p = provider_for(&anvil.endpoint());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(150)).await;
                let _ = p.anvil_mine(Some(1), None).await;
            }
        });
        Self { anvil, deployment, deployment_file, _dir: dir }
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

    pub fn staking(&self) -> Staking::StakingInstance<DynProvider> {
        Staking::new(self.deployment.staking, self.provider())
    }

    /// Move the chain's clock `secs` ahead (past a voting deadline).
    pub async fn skip(&self, secs: u64) {
        let p = self.provider();
        p.anvil_increase_time(secs).await.unwrap();
        p.anvil_mine(Some(1), None).await.unwrap();
    }

    pub async fn head(&self) -> u64 {
        self.provider().get_block_number().await.unwrap()
    }

    /// Register key `i` as a node operator with the node's PeerId and 1 ETH.
    pub async fn register_node(&self, i: usize, node: &RunningNode) {
        let peer = node.p2p.as_ref().unwrap().peer_id();
        Staking::new(self.deployment.staking, self.wallet(i))
            .registerNode(Bytes::from(peer.to_bytes()), "test".into())
            .value(U256::from(ETHER))
            .send()
            .await
            .unwrap()
            .get_receipt()
            .await
            .unwrap();
    }

    /// Register key `i` as a validator with `stake` wei.
    pub async fn register_validator(&self, i: usize, stake: u128) {
        Staking::new(self.deployment.staking, self.wallet(i))
            .registerValidator()
            .value(U256::from(stake))
            .send()
            .await
            .unwrap()
            .get_receipt()
            .await
            .unwrap();
    }

    /// Wait until the head is `blocks` further.
    pub async fn wait_blocks(&self, blocks: u64) {
        let target = self.head().await + blocks;
        wait_until_async(Duration::from_secs(60), async || self.head().await >= target).await;
    }
}

fn provider_for(url: &str) -> DynProvider {
    ProviderBuilder::new().connect_http(url.parse().unwrap()).erased()
}

pub fn models_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}

/// A paid node with operator key `operator`, settling every `settle_secs`, `edit` applied last.
pub async fn paid_node(
    chain: &Chain,
    operator: usize,
    dir: &Path,
    bootstrap: Vec<String>,
    edit: impl FnOnce(&mut NodeConfig),
) -> RunningNode {
    let mut c = NodeConfig { model_repository: models_root(), ..NodeConfig::default() };
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.metrics.listen = "127.0.0.1:0".parse().unwrap();
    c.p2p.listen = vec!["/ip4/127.0.0.1/tcp/0".into()];
    c.p2p.mdns = false;
    c.p2p.bootstrap = bootstrap;
    c.p2p.advert_interval_secs = 0.3;
    c.operator_key = Some(chain.key_hex(operator));
    c.cache.enabled = false;
    let p = &mut c.payment;
    p.enabled = true;
    p.rpc_url = chain.url();
    p.deployment = Some(chain.deployment_file.clone());
    p.ledger = dir.join("ledger");
    p.poll_interval_ms = 50;
    p.settle_interval_secs = 3600.0;
    p.confirm_timeout_secs = 60;
    edit(&mut c);
    start(c).await.unwrap()
}

pub async fn addrs(node: &RunningNode) -> Vec<String> {
    let p2p = node.p2p.as_ref().unwrap();
    for _ in 0..100 {
        let a = p2p.listen_addrs().await.unwrap();
        if !a.is_empty() {
            return a.iter().map(ToString::to_string).collect();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("node did not listen");
}

/// A validator with key `key`, bootstrapped to `bootstrap`, `edit` applied last.
pub async fn validator(
    chain: &Chain,
    key: usize,
    dir: &Path,
    bootstrap: Vec<String>,
    edit: impl FnOnce(&mut ValidatorConfig),
) -> RunningValidator {
    let mut c = ValidatorConfig {
        key: Some(chain.key_hex(key)),
        rpc_url: chain.url(),
        deployment: Some(chain.deployment_file.clone()),
        poll_interval_ms: 150,
        model_repository: models_root(),
        data_dir: dir.to_owned(),
        ..ValidatorConfig::default()
    };
    c.p2p.listen = vec!["/ip4/127.0.0.1/tcp/0".into()];
    c.p2p.bootstrap = bootstrap;
    c.p2p.mdns = false;
    c.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    c.sampling.new_node_receipts = 0;
    c.duties.evidence_wait_secs = 2.0;
    edit(&mut c);
    mlbridge_validator::start(c).await.unwrap()
}

pub async fn validator_addrs(v: &RunningValidator) -> Vec<String> {
    for _ in 0..100 {
        let a = v.listen_addrs().await.unwrap();
        if !a.is_empty() {
            return a.iter().map(ToString::to_string).collect();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("validator did not listen");
}

/// A paying client (key `key`) bootstrapped to `boot`.
pub async fn paying_client(chain: &Chain, key: usize, store: &Path, boot: Vec<String>) -> Client {
    let config = PayerConfig {
        rpc_url: chain.url(),
        deployment: chain.deployment,
        store: store.to_owned(),
        policy: PaymentPolicy {
            max_spend: U256::from(ETHER),
            deposit: U256::from(ETHER / 100),
            ..PaymentPolicy::default()
        },
        confirmations: 3,
        poll_interval: Duration::from_millis(50),
    };
    let payer = Arc::new(Payer::connect(chain.key(key), config).await.unwrap());
    let net = NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap: boot.iter().map(|a| a.parse().unwrap()).collect(),
        mdns: false,
        heartbeat: Duration::from_millis(200),
        ..NetConfig::default()
    };
    let config = ClientConfig {
        net,
        strategy: Strategy::RoundRobin,
        request_timeout: Duration::from_secs(10),
        ..ClientConfig::default()
    };
    Client::start(config).unwrap().with_payer(payer)
}

pub fn input(seed: f32) -> Vec<Tensor> {
    let data = (0..256).map(|i| seed + i as f32 / 256.0).collect();
    vec![Tensor::new("input", vec![1, 256], TensorData::Fp32(data)).unwrap()]
}

/// A metric's value (first line with this name and labels), 0 if absent.
pub fn metric(v: &RunningValidator, name_and_labels: &str) -> f64 {
    v.metrics
        .render()
        .lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|x| x.parse().ok())
        .unwrap_or(0.0)
}

/// Poll `cond` every 100 ms until it holds; fail the test after `limit`.
pub async fn wait_until_async(limit: Duration, mut cond: impl AsyncFnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond().await {
        assert!(start.elapsed() < limit, "condition not met within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn address(chain: &Chain, i: usize) -> Address {
    chain.key(i).address()
}
