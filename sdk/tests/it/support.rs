//! Shared helpers: anvil, providers, a TCP proxy that can simulate an RPC outage.

use std::net::SocketAddr;
use std::path::PathBuf;

use alloy::node_bindings::{Anvil, AnvilInstance};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use mlbridge_sdk::chain::{DeployParams, Deployment, deploy};
pub use mlbridge_testkit::Proxy;

pub fn anvil_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil")
}

/// Anvil with automine (each transaction mined at once) unless `block_time` is given.
pub fn spawn_anvil(block_time: Option<u64>) -> AnvilInstance {
    let mut anvil = Anvil::at(anvil_bin()).arg("--host").arg("127.0.0.1");
    if let Some(secs) = block_time {
        anvil = anvil.arg("--block-time").arg(secs.to_string());
    }
    anvil.try_spawn().expect("anvil (run scripts/setup)")
}

pub fn key(anvil: &AnvilInstance, i: usize) -> PrivateKeySigner {
    anvil.keys()[i].clone().into()
}

/// A plain provider (no wallet) for reads, the tracker and TxSender.
pub fn provider(url: &str) -> DynProvider {
    ProviderBuilder::new().connect_http(url.parse().unwrap()).erased()
}

/// A provider that signs with `signer` (for deployments and quick calls).
pub fn wallet_provider(url: &str, signer: PrivateKeySigner) -> DynProvider {
    ProviderBuilder::new().wallet(signer).connect_http(url.parse().unwrap()).erased()
}

pub async fn deploy_all(anvil: &AnvilInstance) -> Deployment {
    let p = wallet_provider(&anvil.endpoint(), key(anvil, 0));
    deploy(&p, &DeployParams::default()).await.unwrap()
}

pub fn anvil_addr(anvil: &AnvilInstance) -> SocketAddr {
    format!("127.0.0.1:{}", anvil.port()).parse().unwrap()
}

pub async fn head(p: &DynProvider) -> u64 {
    p.get_block_number().await.unwrap()
}
