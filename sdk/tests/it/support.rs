//! Shared helpers: anvil, providers, a TCP proxy that can simulate an RPC outage.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use alloy::node_bindings::{Anvil, AnvilInstance};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use mlbridge_sdk::chain::{DeployParams, Deployment, deploy};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

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

/// A TCP proxy in front of the RPC; `set_down(true)` cuts every connection and refuses new ones.
pub struct Proxy {
    pub addr: SocketAddr,
    down: Arc<AtomicBool>,
    kill: broadcast::Sender<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let (kill, _) = broadcast::channel(16);
        let (down2, kill2) = (down.clone(), kill.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if down2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut killed = kill2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = killed.recv() => {}
                    }
                });
            }
        });
        Self { addr, down, kill }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            let _ = self.kill.send(());
        }
    }
}

pub fn anvil_addr(anvil: &AnvilInstance) -> SocketAddr {
    format!("127.0.0.1:{}", anvil.port()).parse().unwrap()
}

pub async fn head(p: &DynProvider) -> u64 {
    p.get_block_number().await.unwrap()
}
