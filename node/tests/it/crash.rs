//! Crash durability: the real `mlbridge-node` binary is killed with SIGKILL at random moments during a paid load,
//! ten times, and restarted each time. Every answered job must end up paid, exactly once, and nothing beyond what
//! the client signed.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy::primitives::{B256, U256};
use alloy::providers::Provider;
use alloy::rpc::types::Filter;
use mlbridge_sdk::chain::bindings::PaymentChannels;
use mlbridge_sdk::client::{Client, ClientConfig, Strategy};
use mlbridge_sdk::net::NetConfig;
use mlbridge_sdk::{Tensor, TensorData};

use crate::chain::*;
use crate::support::models_root;

struct NodeProcess {
    child: Child,
    p2p: libp2p::Multiaddr,
    metrics: String,
}

fn spawn_node(config: &Path, log: &Path) -> NodeProcess {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mlbridge-node"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut p2p, mut metrics) = (None, None);
    while p2p.is_none() {
        let line = lines.next().expect("the node printed its addresses").unwrap();
        if let Some(rest) = line.strip_prefix("mlbridge-node: API on ") {
            metrics = rest.split("metrics on http://").nth(1).map(|m| m.trim_end_matches("/metrics").to_owned());
        }
        if let Some(addr) = line.strip_prefix("mlbridge-node: p2p on ") {
            p2p = Some(addr.parse().unwrap());
        }
    }
    NodeProcess { child, p2p: p2p.unwrap(), metrics: metrics.unwrap() }
}

/// A small deterministic random sequence (xorshift), seeded from the clock.
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_paid_load_loses_no_payment() {
    let chain = Chain::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            r#"model_repository = "{models}"
operator_key = "{key}"
[http]
listen = "127.0.0.1:0"
[metrics]
listen = "127.0.0.1:0"
[cache]
enabled = false
[p2p]
listen = ["/ip4/127.0.0.1/tcp/0"]
mdns = false
advert_interval_secs = 0.3
identity_file = "{dir}/identity"
[payment]
enabled = true
rpc_url = "{rpc}"
deployment = "{deployment}"
ledger = "{dir}/ledger"
poll_interval_ms = 50
settle_interval_secs = 0.4
settle_gas_multiple = 0
confirm_timeout_secs = 20
resubmit_after_secs = 2
"#,
            models = models_root().display(),
            key = chain.key_hex(1),
            dir = dir.path().display(),
            rpc = chain.url(),
            deployment = chain.deployment_file.display(),
        ),
    )
    .unwrap();
    let log = dir.path().join("node.log");
    let store = tempfile::tempdir().unwrap();
    let operator_before = chain.provider().get_balance(chain.key(1).address()).await.unwrap();
    let payer = payer(&chain, 3, store.path(), ETHER).await;
    let answered: Arc<Mutex<(u64, U256, Option<B256>)>> = Arc::new(Mutex::new((0, U256::ZERO, None)));
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let mut rng = Rng(seed | 1);
    println!("kill schedule seed {seed}");

    for round in 0..10 {
        let mut node = spawn_node(&config, &log);
        let net = NetConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            bootstrap: vec![node.p2p.clone()],
            mdns: false,
            heartbeat: Duration::from_millis(200),
            ..NetConfig::default()
        };
        let config = ClientConfig { net, strategy: Strategy::RoundRobin, ..ClientConfig::default() };
        let c = Client::start(config).unwrap().with_payer(payer.clone());
        assert!(!c.wait_for_nodes("mlp-tiny", 1, Duration::from_secs(20)).await.unwrap().is_empty());
        let mut load = Vec::new();
        for t in 0..4 {
            let (c, answered) = (c.clone(), answered.clone());
            load.push(tokio::spawn(async move {
                for i in 0.. {
                    let data = (0..256).map(|k| (t * 1000 + i + k) as f32 / 4096.0).collect();
                    let x = vec![Tensor::new("input", vec![1, 256], TensorData::Fp32(data)).unwrap()];
                    // Failures are expected around the kill; only answered jobs count.
                    if let Ok(out) = c.infer("mlp-tiny", Some(1), x).await {
                        let p = out.paid.expect("paid");
                        let mut a = answered.lock().unwrap();
                        a.0 += 1;
                        a.1 += p.price;
                        a.2 = Some(p.channel_id);
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(300 + rng.next(1200))).await;
        node.child.kill().unwrap(); // SIGKILL
        node.child.wait().unwrap();
        for t in load {
            t.abort();
        }
        println!("round {round}: killed with {} jobs answered so far", answered.lock().unwrap().0);
    }

    // Restart once more and settle everything the ledger holds.
    let mut node = spawn_node(&config, &log);
    let http = reqwest::Client::new();
    let redeem = format!("http://{}/admin/redeem", node.metrics);
    let unauthorized = http.post(&redeem).send().await.unwrap();
    assert_eq!(unauthorized.status().as_u16(), 401, "admin calls need the node's token");
    let token = std::fs::read_to_string(mlbridge_node::api::admin::token_path(&dir.path().join("ledger"))).unwrap();
    let report = http.post(&redeem).bearer_auth(&token).send().await.unwrap();
    assert!(report.status().is_success(), "{:?}", report.text().await);
    let status: serde_json::Value = http
        .get(format!("http://{}/admin/status", node.metrics))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    node.child.kill().unwrap();
    node.child.wait().unwrap();

    let (jobs, answered_total, channel) = *answered.lock().unwrap();
    let channel = channel.expect("jobs were answered");
    assert!(jobs >= 10, "the load ran: {jobs} jobs");
    let pc = PaymentChannels::new(chain.deployment.payment_channels, chain.provider());
    let redeemed = U256::from(pc.getChannel(channel).call().await.unwrap().redeemed);
    assert!(redeemed >= answered_total, "every answered job is paid: redeemed {redeemed} < answered {answered_total}");
    let entry = &status["channels"][0];
    assert_eq!(entry["redeemed_wei"], redeemed.to_string(), "the ledger agrees with the chain");
    assert_eq!(entry["best_voucher_wei"], redeemed.to_string(), "the best voucher held is redeemed, nothing left");
    // Exactly once, judged from outside the contract's own bookkeeping: the redeemed total is at most what the
    // client ever signed on the channel (its store's high-water mark) and at least what it got answers for, and the
    // operator's balance rose by exactly the redeemed total minus the protocol fee, net of its gas (nothing paid
    // twice, nothing paid that the client did not sign).
    let signed = payer.store().get(&channel).expect("the client's channel").signed;
    assert!(redeemed <= signed, "redeemed {redeemed} is more than the client ever signed ({signed})");
    let filter = Filter::new()
        .address(chain.deployment.payment_channels)
        .event_signature(<PaymentChannels::Redeemed as alloy::sol_types::SolEvent>::SIGNATURE_HASH)
        .topic1(channel)
        .from_block(0);
    let logs = chain.provider().get_logs(&filter).await.unwrap();
    let mut gas_spent = U256::ZERO;
    let mut fee = U256::ZERO;
    let mut seen = std::collections::HashSet::new();
    for l in &logs {
        let tx = l.transaction_hash.unwrap();
        if seen.insert(tx) {
            let r = chain.provider().get_transaction_receipt(tx).await.unwrap().unwrap();
            gas_spent += U256::from(r.gas_used) * U256::from(r.effective_gas_price);
            // One channel per redemption here: the batch's fee is this channel's.
            fee += r.decoded_log::<PaymentChannels::BatchRedeemed>().expect("BatchRedeemed").fee;
        }
    }
    let operator = chain.key(1).address();
    let balance = chain.provider().get_balance(operator).await.unwrap();
    assert_eq!(
        balance + gas_spent,
        operator_before + redeemed - fee,
        "the operator received the redeemed total once (less the fee), net of gas"
    );
    println!(
        "{jobs} jobs answered across 10 kills ({answered_total} wei), signed {signed}, redeemed {redeemed} in {} redemptions",
        logs.len()
    );
}

/// The `mlbridge` CLI built beside this test (the workspace's binaries share one target folder).
fn cli_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps");
    let cli = dir.join("mlbridge");
    assert!(cli.is_file(), "{} is missing: build the workspace's binaries (cargo build --workspace)", cli.display());
    cli
}

/// Paid embeddings from the `mlbridge` CLI, as a separate process with its own voucher store.
fn spawn_client(chain: &Chain, node: &libp2p::Multiaddr, store: &Path, repeat: u32) -> Child {
    Command::new(cli_binary())
        .args(["infer", "--model", "minilm-l6", "--version", "2", "--text", "pay as you go", "--wait", "1"])
        .args(["--repeat", &repeat.to_string(), "--bootstrap", &node.to_string()])
        .args(["--key", &chain.key_hex(3), "--rpc-url", &chain.url(), "--max-spend", "1", "--auto-deposit", "0.1"])
        .arg("--deployment")
        .arg(&chain.deployment_file)
        .arg("--store")
        .arg(store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_client_costs_it_at_most_one_credit_window() {
    use mlbridge_sdk::payment::{PaymentPolicy, VoucherStore};
    let chain = Chain::start().await;
    let (ledger, store) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let node = crate::support::start_node(|c| paid(c, &chain, &chain.url(), 1, ledger.path())).await;
    let addr = crate::support::addrs(&node).await.remove(0);
    let paid = || node.payments.as_ref().unwrap().metrics().paid_jobs.get();
    // The client pays as it goes; it is killed (SIGKILL) once the node has answered 120 of its jobs, with jobs
    // in flight and credit paid ahead.
    let mut client = spawn_client(&chain, &addr, store.path(), 10_000);
    crate::support::wait_until(Duration::from_secs(120), || paid() >= 120).await;
    client.kill().unwrap();
    client.wait().unwrap();
    // The job the client had in flight is still answered (and charged: it was paid for) into a closed stream.
    crate::support::wait_metric(&node, "mlbridge_p2p_inflight", Duration::from_secs(20), |n| n == 0.0).await;
    let before = paid();
    // A restarted client (same store, new process) goes on: it never signs an amount at or below one it signed
    // before (the node would refuse it), so its 20 jobs all pass.
    let status = spawn_client(&chain, &addr, store.path(), 20).wait().unwrap();
    assert!(status.success(), "the restarted client's jobs are paid and answered");
    // (A request of the killed client still in the node's socket buffer may yet be read and charged: one more.)
    assert!((before + 20..=before + 21).contains(&paid()), "{} jobs charged after {before}", paid());
    let report = node.payments.as_ref().unwrap().settler().settle_now().await.unwrap();
    assert_eq!(report.transactions.len(), 1);
    let store = VoucherStore::open(store.path()).unwrap();
    let channel = store.list().pop().expect("one channel");
    let pc = PaymentChannels::new(chain.deployment.payment_channels, chain.provider());
    let redeemed = U256::from(pc.getChannel(channel.channel_id).call().await.unwrap().redeemed);
    let price = U256::from(node.engine.config("minilm-l6", Some(2)).unwrap().price_wei);
    let charged = price * U256::from(paid());
    // The node redeemed exactly the highest amount the client signed (nothing it did not sign)...
    assert_eq!(redeemed, channel.signed, "the highest voucher signed, redeemed");
    // ...which covers every answered job, plus what was paid ahead and not used: the window the killed client had
    // signed ahead (lost with its memory) and the restarted client's current one, each at most the policy's cap.
    let policy = PaymentPolicy::default();
    let window = policy.max_credit_wei.min(price * U256::from(policy.max_credit_jobs));
    assert!(redeemed >= charged, "every answered job is paid: {redeemed} < {charged}");
    let unearned = redeemed - charged;
    assert!(unearned <= window * U256::from(2u64), "the client lost {unearned} wei, more than two windows of {window}");
    println!("client killed after {before} jobs: {unearned} wei paid ahead unused (window {window} wei)");
}
