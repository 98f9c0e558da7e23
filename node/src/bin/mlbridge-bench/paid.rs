//! The paid-path benchmark: the same p2p load on a free node and on a paid node (voucher signing and checking,
//! ledger flush, receipt signing and verification), then the amortized settlement gas per inference.
//!
//! It starts its own anvil (1 s blocks) and deploys the contracts from the committed artifacts; the payer opens one
//! channel per node during a warm-up; settlement is one `redeemMany` at the end.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use alloy::node_bindings::Anvil;
use alloy::primitives::U256;
use alloy::providers::{Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use anyhow::{Context, Result};
use mlbridge_sdk::chain::{DeployParams, deploy};
use mlbridge_sdk::client::Client;
use mlbridge_sdk::payment::{Payer, PayerConfig, PaymentPolicy};

use crate::load::{self, Limits, Stats};
use crate::scenarios::{client_for, header, node, request, row};

const ETHER: u128 = 1_000_000_000_000_000_000;

/// Paid vs free over p2p for mlp-tiny and MiniLM INT8 at concurrency 1/16/64, and settlement gas per inference.
pub(crate) async fn paid(
    repo: &Path,
    anvil_bin: &Path,
    models: &[String],
    repeats: usize,
    limits: Limits,
) -> Result<()> {
    let anvil = Anvil::at(anvil_bin).arg("--host").arg("127.0.0.1").arg("--block-time").arg("1").try_spawn()?;
    let key = |i: usize| -> PrivateKeySigner { anvil.keys()[i].clone().into() };
    let deployer = ProviderBuilder::new().wallet(key(0)).connect_http(anvil.endpoint().parse()?).erased();
    let deployment = deploy(&deployer, &DeployParams::default()).await?;
    let dir = std::env::temp_dir().join(format!("mlbridge-bench-paid-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let deployment_file = dir.join("deployment.json");
    deployment.save(&deployment_file)?;

    println!("# Paid vs free benchmark");
    println!(
        "\n{} CPUs, {} s per row, batch 1 per request; node and client in one process on 127.0.0.1 (libp2p over TCP); \
         result cache off; anvil with 1 s blocks. Paid = the client signs a voucher per job (store reserved every 16 \
         vouchers), the node checks it, flushes its sled ledger and signs the receipt, the client verifies the receipt.",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        limits.seconds
    );
    let free = node(repo, |c| c.cache.enabled = false).await?;
    let operator = key(1);
    let paid = node(repo, |c| {
        c.cache.enabled = false;
        c.operator_key = Some(hex::encode(anvil.keys()[1].to_bytes()));
        let p = &mut c.payment;
        p.enabled = true;
        p.rpc_url = anvil.endpoint();
        p.deployment = Some(deployment_file.clone());
        p.ledger = dir.join("ledger");
        p.poll_interval_ms = 200;
        p.settle_interval_secs = 3600.0;
    })
    .await?;
    let payer = Payer::connect(
        key(3),
        PayerConfig {
            rpc_url: anvil.endpoint(),
            deployment,
            store: dir.join("payer"),
            policy: PaymentPolicy {
                max_spend: U256::from(1000 * ETHER),
                deposit: U256::from(100 * ETHER),
                ..PaymentPolicy::default()
            },
            confirmations: 3,
            poll_interval: Duration::from_millis(100),
        },
    )
    .await?;
    let free_client = client_for(&free).await?;
    let paid_client = client_for(&paid).await?.with_payer(Arc::new(payer));
    // Warm-up: opens the channel (3 confirmations) and waits until the node's view has it.
    let warm = request(&paid.engine, "mlp-tiny", 1, 0)?;
    paid_client.infer("mlp-tiny", Some(1), warm).await.context("warm-up paid job")?;

    header(
        "paid vs free over libp2p (\"of free\" = share of the free path at the same concurrency; mean of the alternating runs)",
        "of free",
    );
    let mut ratios = Vec::new();
    for (name, version, label) in [("mlp-tiny", 1u64, "fp32"), ("minilm-l6", 2, "INT8")] {
        if !models.is_empty() && !models.iter().any(|m| m == name) {
            continue;
        }
        let what = format!("{name}/{version} {label}");
        let inputs = request(&free.engine, name, version, 0)?;
        for c in [1usize, 16, 64] {
            let measure = |cl: Client| {
                let inputs = inputs.clone();
                load::run(c, limits, move |_| {
                    let (cl, inputs) = (cl.clone(), inputs.clone());
                    async move {
                        match cl.infer(name, Some(version), inputs).await {
                            Ok(_) => true,
                            Err(err) => {
                                tracing::warn!(%err, "request failed");
                                false
                            }
                        }
                    }
                })
            };
            // Alternate free and paid runs so that drift in this machine's speed hits both alike.
            let (mut frees, mut paids) = (Vec::new(), Vec::new());
            for _ in 0..repeats {
                frees.push(measure(free_client.clone()).await);
                paids.push(measure(paid_client.clone()).await);
            }
            let (f, p) = (Stats::mean(&frees), Stats::mean(&paids));
            row(&what, "p2p free", c, &f, Some(f.throughput()));
            row(&what, "p2p paid", c, &p, Some(f.throughput()));
            ratios.push((what.clone(), c, p.throughput() / f.throughput()));
        }
    }
    println!();
    for (what, c, r) in &ratios {
        println!("paid/free throughput {what} at concurrency {c}: {:.1}%", 100.0 * r);
    }

    let service = paid.payments.as_ref().context("paid mode")?;
    let report = service.settler().settle_now().await?;
    let (gas, jobs): (u64, u64) = report.transactions.iter().fold((0, 0), |(g, j), t| (g + t.gas_used, j + t.jobs));
    let balance = deployer.get_balance(operator.address()).await?;
    println!(
        "\nsettlement: {} redeemMany transaction(s), {gas} gas for {jobs} paid jobs = {:.3} gas per inference \
         (operator balance now {balance} wei)",
        report.transactions.len(),
        gas as f64 / jobs.max(1) as f64
    );
    free.shutdown.cancel();
    paid.shutdown.cancel();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
