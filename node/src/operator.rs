//! Operator commands: `register` (stake + PeerId + metadata on `Staking`), `status` (stake, channels, unredeemed
//! value, last settlements) and `redeem --now`. `status` and `redeem` ask the running node over its admin endpoints
//! (on the metrics port); when the node is not running they open the ledger themselves.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::utils::{format_ether, parse_ether};
use alloy::primitives::{Bytes, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use clap::Args;
use mlbridge_sdk::chain::bindings::Staking;
use mlbridge_sdk::chain::{ConfirmationTracker, Deployment, SenderConfig, TrackerConfig, TxSender, wait_confirmed};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::config::NodeConfig;
use crate::payment::PaymentService;
use crate::{Error, Result};

/// Where the operator's node, key and chain are (the node's config file, with flags on top).
#[derive(Debug, Clone, Default, Args)]
pub struct OperatorArgs {
    /// The node's TOML config file (operator key, `[payment]` rpc_url/deployment/ledger, metrics address).
    #[arg(long, env = "MLBRIDGE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Operator key in an encrypted keystore file (`mlbridge key new`).
    #[arg(long, env = "MLBRIDGE_OPERATOR_KEYSTORE", value_name = "FILE")]
    pub operator_keystore: Option<PathBuf>,
    /// The keystore's password file (first line); else $MLBRIDGE_KEYSTORE_PASSWORD, else a prompt.
    #[arg(long, env = "MLBRIDGE_OPERATOR_PASSWORD_FILE", value_name = "FILE")]
    pub operator_password_file: Option<PathBuf>,
    /// Operator private key (hex), for devnets only (anvil's well-known keys); use --operator-keystore.
    #[arg(long, env = "MLBRIDGE_OPERATOR_KEY", hide_env_values = true)]
    pub operator_key: Option<String>,
    /// Chain RPC URL.
    #[arg(long, env = "MLBRIDGE_RPC_URL")]
    pub rpc_url: Option<String>,
    /// The contracts' addresses file.
    #[arg(long, env = "MLBRIDGE_DEPLOYMENT")]
    pub deployment: Option<PathBuf>,
    /// Ledger folder (used when the node is not running).
    #[arg(long, env = "MLBRIDGE_LEDGER")]
    pub ledger: Option<PathBuf>,
}

impl OperatorArgs {
    fn node_config(&self) -> Result<NodeConfig> {
        let mut c = match &self.config {
            Some(p) => NodeConfig::load(p)?,
            None => NodeConfig::default(),
        };
        if let Some(k) = &self.operator_key {
            c.operator_key = Some(k.clone());
        }
        if let Some(k) = &self.operator_keystore {
            c.operator_keystore = Some(k.clone());
        }
        if let Some(p) = &self.operator_password_file {
            c.operator_password_file = Some(p.clone());
        }
        if let Some(u) = &self.rpc_url {
            c.payment.rpc_url = u.clone();
        }
        if let Some(d) = &self.deployment {
            c.payment.deployment = Some(d.clone());
        }
        if let Some(l) = &self.ledger {
            c.payment.ledger = l.clone();
        }
        c.payment.enabled = true;
        Ok(c)
    }
}

fn config_error(what: &str, reason: impl std::fmt::Display) -> Error {
    Error::Config { path: what.into(), reason: reason.to_string() }
}

fn chain_parts(c: &NodeConfig) -> Result<(DynProvider, Deployment, alloy::signers::local::PrivateKeySigner)> {
    let signer = c.operator_signer()?.ok_or_else(|| config_error("operator_key", "give --operator-keystore"))?;
    let path = c.payment.deployment.as_deref().ok_or_else(|| config_error("deployment", "give --deployment"))?;
    let deployment = Deployment::load(path)?;
    let url = c.payment.rpc_url.parse().map_err(|e| config_error("rpc_url", e))?;
    Ok((ProviderBuilder::new().connect_http(url).erased(), deployment, signer))
}

/// `register`: stake and register the node (PeerId from its identity file, metadata URI).
pub async fn register(args: &OperatorArgs, stake: &str, metadata_uri: &str) -> Result<()> {
    let c = args.node_config()?;
    let (provider, deployment, signer) = chain_parts(&c)?;
    let identity = crate::p2p::load_identity(c.p2p.identity_file.as_deref())?;
    let peer_id = identity.public().to_peer_id();
    if c.p2p.identity_file.is_none() {
        tracing::warn!(target: "node", "no [p2p] identity_file: registering an ephemeral PeerId the node will not have");
    }
    let staking = Staking::new(deployment.staking, provider.clone());
    let stake = if stake.is_empty() {
        staking.MIN_NODE_STAKE().call().await.map_err(|e| Error::Chain(mlbridge_sdk::Error::Rpc(e.to_string())))?
    } else {
        parse_ether(stake).map_err(|e| config_error("--stake", e))?
    };
    let tx = staking
        .registerNode(Bytes::from(peer_id.to_bytes()), metadata_uri.to_owned())
        .value(stake)
        .into_transaction_request();
    let sender =
        TxSender::new(provider.clone(), signer.clone(), SenderConfig::default(), None).await.map_err(Error::Chain)?;
    let sent = sender.send("register", tx).await.map_err(Error::Chain)?;
    println!("register: {} sent; waiting for 3 confirmations", sent.hash);
    let tracker = ConfirmationTracker::spawn(provider, TrackerConfig::default(), None);
    let state = wait_confirmed(tracker.track_sent(&sent).await.map_err(Error::Chain)?).await.map_err(Error::Chain)?;
    println!(
        "registered operator {} with PeerId {peer_id} and {} ETH stake ({state:?})",
        signer.address(),
        format_ether(stake)
    );
    Ok(())
}

async fn admin(c: &NodeConfig, method: reqwest::Method, path: &str) -> Option<Result<Value>> {
    let url = format!("http://{}{path}", c.metrics.listen);
    let token_file = crate::api::admin::token_path(&c.payment.ledger);
    let token = std::fs::read_to_string(&token_file).unwrap_or_default();
    let resp = reqwest::Client::new()
        .request(method, &url)
        .bearer_auth(token.trim())
        .timeout(Duration::from_secs(600))
        .send()
        .await;
    let resp = match resp {
        Ok(r) => r,
        Err(e) if e.is_connect() => return None, // not running: work on the ledger directly
        Err(e) => return Some(Err(Error::Settlement(format!("{url}: {e}")))),
    };
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    Some(if status.is_success() { Ok(body) } else { Err(Error::Settlement(format!("{url}: {status} {body}"))) })
}

/// Start the payment side alone (the node is not running), run `f`, stop it.
async fn offline<T>(c: &NodeConfig, f: impl AsyncFnOnce(&PaymentService) -> Result<T>) -> Result<T> {
    let (_, _, signer) = chain_parts(c)?;
    let registry = prometheus::Registry::new();
    let shutdown = CancellationToken::new();
    let mut payment = c.payment.clone();
    payment.settle_interval_secs = 3600.0; // only what `f` asks
    payment.shutdown_settle_secs = 0;
    let (service, tasks): (Arc<PaymentService>, _) =
        PaymentService::start(&payment, signer, &registry, shutdown.clone()).await?;
    let out = f(&service).await;
    shutdown.cancel();
    for t in tasks {
        let _ = t.await;
    }
    out
}

/// `status`: stake, channels, unredeemed value and the last settlements.
pub async fn status(args: &OperatorArgs) -> Result<()> {
    let c = args.node_config()?;
    let (provider, deployment, signer) = chain_parts(&c)?;
    let stake = Staking::new(deployment.staking, provider.clone()).stakeOf(signer.address()).call().await;
    let status = match admin(&c, reqwest::Method::GET, "/admin/status").await {
        Some(s) => s?,
        None => offline(&c, async |p| crate::api::admin::status_json(p)).await?,
    };
    println!("operator {}", signer.address());
    match stake {
        Ok(s) => println!("stake    {} ETH", format_ether(s)),
        Err(e) => println!("stake    unknown ({e})"),
    }
    let channels = status["channels"].as_array().cloned().unwrap_or_default();
    let wei = |v: &Value| v.as_str().and_then(|s| U256::from_str_radix(s, 10).ok()).unwrap_or_default();
    let unredeemed: U256 = channels.iter().map(|ch| wei(&ch["unredeemed_wei"])).sum();
    println!("channels {} (unredeemed {} ETH)", channels.len(), format_ether(unredeemed));
    for ch in &channels {
        println!(
            "  {} payer {} jobs {:>7} best {} ETH redeemed {} ETH{}",
            ch["channel"].as_str().unwrap_or("?"),
            ch["payer"].as_str().unwrap_or("?"),
            ch["jobs"],
            format_ether(wei(&ch["best_voucher_wei"])),
            format_ether(wei(&ch["redeemed_wei"])),
            ch["failed"].as_str().map(|f| format!(" FAILED: {f}")).unwrap_or_default()
        );
    }
    // Confirmations against the chain's head now (the node's view may be a poll behind).
    let head = provider.get_block_number().await.ok().or_else(|| status["head"].as_u64()).unwrap_or_default();
    println!("last settlements (head {head}):");
    for s in status["settlements"].as_array().cloned().unwrap_or_default() {
        let block = s["block"].as_u64().unwrap_or_default();
        println!(
            "  {} block {block} ({} confirmations) channels {} jobs {} amount {} ETH gas {}",
            s["tx"].as_str().unwrap_or("?"),
            (head + 1).saturating_sub(block),
            s["channels"],
            s["jobs"],
            format_ether(wei(&s["amount_wei"])),
            s["gas_used"]
        );
    }
    Ok(())
}

/// `redeem --now`: redeem every channel's best voucher and wait for the confirmations.
pub async fn redeem_now(args: &OperatorArgs) -> Result<()> {
    let c = args.node_config()?;
    let report = match admin(&c, reqwest::Method::POST, "/admin/redeem").await {
        Some(r) => r?,
        None => {
            let report = offline(&c, async |p| p.settler().settle_now().await).await?;
            serde_json::to_value(report).unwrap_or(Value::Null)
        }
    };
    let txs = report["transactions"].as_array().cloned().unwrap_or_default();
    if txs.is_empty() {
        println!("nothing to redeem");
    }
    for t in txs {
        println!(
            "redeemed {} channel(s), {} job(s) in {} (block {}, gas {})",
            t["channels"],
            t["jobs"],
            t["tx_hash"].as_str().unwrap_or("?"),
            t["block"],
            t["gas_used"]
        );
    }
    Ok(())
}
