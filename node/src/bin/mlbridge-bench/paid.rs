//! The paid-path benchmark: the same p2p load on a free node and on a paid node (payment intervals: vouchers paying
//! ahead for a credit window, batched receipts, group-committed charges), runs alternating, the median of the
//! repeats shown; the node's own HTTP throughput on the same run; receipt bytes and signatures per answer; and the
//! amortized settlement gas per inference.
//!
//! It starts its own anvil (1 s blocks) and deploys the contracts from the committed artifacts; the payer opens one
//! channel per node during a warm-up; settlement is one `redeemMany` at the end. With `--split` the nodes run as
//! separate processes pinned to core 0 and the load generator stays on core 1.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use alloy::node_bindings::Anvil;
use alloy::primitives::U256;
use alloy::providers::ProviderBuilder;
use alloy::signers::local::PrivateKeySigner;
use anyhow::{Context, Result};
use mlbridge_node::inference::ModelRepository;
use mlbridge_sdk::chain::{DeployParams, deploy};
use mlbridge_sdk::client::Client;
use mlbridge_sdk::payment::{Payer, PayerConfig, PaymentPolicy};
use mlbridge_sdk::protocol::{ReceiptMsg, encode};

use crate::load::{self, Limits, Stats};
use crate::scenarios::{header, http_load, kserve_body, request_for, row};
use crate::target::{PaidSetup, Target};

const ETHER: u128 = 1_000_000_000_000_000_000;

/// What to run: which models, how many alternating repeats per row, and whether the nodes are pinned processes.
pub(crate) struct PaidBench<'a> {
    pub(crate) repo: &'a Path,
    pub(crate) anvil: &'a Path,
    pub(crate) models: &'a [String],
    pub(crate) repeats: usize,
    pub(crate) limits: Limits,
    /// The node binary, when the nodes run pinned to core 0 (`--split`).
    pub(crate) split: Option<&'a Path>,
    /// Concurrencies to measure.
    pub(crate) concurrency: Vec<usize>,
}

async fn measure(
    client: &Client,
    name: &'static str,
    version: u64,
    inputs: &[mlbridge_sdk::Tensor],
    c: usize,
    limits: Limits,
) -> Stats {
    let (cl, inputs) = (client.clone(), inputs.to_vec());
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
    .await
}

/// Paid vs free over p2p for mlp-tiny and MiniLM INT8 at concurrency 1/16/64, and what a paid answer costs.
pub(crate) async fn paid(b: PaidBench<'_>) -> Result<()> {
    let anvil = Anvil::at(b.anvil).arg("--host").arg("127.0.0.1").arg("--block-time").arg("1").try_spawn()?;
    let key = |i: usize| -> PrivateKeySigner { anvil.keys()[i].clone().into() };
    let deployer = ProviderBuilder::new().wallet(key(0)).connect_http(anvil.endpoint().parse()?);
    let deployment = deploy(&deployer, &DeployParams::default()).await?;
    let dir = std::env::temp_dir().join(format!("mlbridge-bench-paid-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let deployment_file = dir.join("deployment.json");
    deployment.save(&deployment_file)?;

    println!("# Paid vs free benchmark");
    let placement = match b.split {
        Some(_) => "each node a separate process pinned to core 0 (taskset), the load generator on core 1",
        None => "node and load generator in one process",
    };
    println!(
        "\n{} CPUs, {} s per run, batch 1 per request; {placement}; 127.0.0.1 (libp2p over TCP, one multiplexed \
         stream); result cache off; anvil with 1 s blocks. Free and paid runs alternate, {} of each per row; the row \
         shows the run of median throughput. Paid = payment intervals: a voucher only when the credit paid ahead runs \
         out (window up to 256 jobs), receipts signed per batch and checked per batch by the client, charges \
         group-committed.",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        b.limits.seconds,
        b.repeats,
    );
    let free = Target::start(b.split, b.repo, &dir, "free", None).await?;
    let paid = Target::start(
        b.split,
        b.repo,
        &dir,
        "paid",
        Some(PaidSetup {
            operator_key_hex: hex::encode(anvil.keys()[1].to_bytes()),
            rpc_url: anvil.endpoint(),
            deployment: deployment_file.clone(),
            ledger: dir.join("ledger"),
        }),
    )
    .await?;
    let payer = Arc::new(
        Payer::connect(
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
        .await?,
    );
    let free_client = free.client().await?;
    let paid_client = paid.client().await?.with_payer(payer.clone());
    let repository = ModelRepository::open(b.repo)?;
    // Warm-up: opens the channel (3 confirmations) and waits until the node's view has it.
    let warm = request_for(repository.config("mlp-tiny", Some(1))?, "mlp-tiny", 0)?;
    let first = paid_client.infer("mlp-tiny", Some(1), warm).await.context("warm-up paid job")?;
    let http = reqwest::Client::builder().pool_max_idle_per_host(128).build()?;

    header(
        "paid vs free over libp2p, and the node's own HTTP (\"of free\" = share of free p2p at the same concurrency)",
        "of free",
    );
    let mut ratios = Vec::new();
    for (name, version, label) in [("mlp-tiny", 1u64, "fp32"), ("minilm-l6", 2, "INT8")] {
        if !b.models.is_empty() && !b.models.iter().any(|m| m == name) {
            continue;
        }
        let what = format!("{name}/{version} {label}");
        let inputs = request_for(repository.config(name, Some(version))?, name, 0)?;
        let url = format!("http://{}/v2/models/{name}/versions/{version}/infer", free.http());
        let with_http = name == "mlp-tiny";
        for &c in &b.concurrency {
            // Alternate free, paid (and HTTP) runs so that drift in this machine's speed hits all alike.
            let (mut frees, mut paids, mut https) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..b.repeats {
                frees.push(measure(&free_client, name, version, &inputs, c, b.limits).await);
                paids.push(measure(&paid_client, name, version, &inputs, c, b.limits).await);
                if with_http {
                    https.push(http_load(&http, url.clone(), kserve_body(&inputs), c, b.limits).await);
                }
            }
            let (f, p) = (Stats::median(&frees), Stats::median(&paids));
            row(&what, "p2p free", c, &f, Some(f.throughput()));
            row(&what, "p2p paid", c, &p, Some(f.throughput()));
            ratios.push((format!("paid/free throughput {what} at concurrency {c}"), p.throughput() / f.throughput()));
            if with_http {
                let h = Stats::median(&https);
                row(&what, "http free", c, &h, Some(f.throughput()));
                ratios.push((
                    format!("free p2p/HTTP throughput {what} at concurrency {c}"),
                    f.throughput() / h.throughput(),
                ));
            }
        }
    }
    println!();
    for (what, r) in &ratios {
        println!("{what}: {:.1}%", 100.0 * r);
    }

    // What a paid answer carries and costs the node: receipt bytes (batched, with its proof, against the same receipt
    // signed alone), signatures and vouchers per answered job.
    let receipt = first.response.receipt.clone().context("a paid answer has a receipt")?;
    let alone = ReceiptMsg::sign_single(&receipt.receipt(), key(1).address(), &key(1), payer.domain())?;
    let jobs = paid.metric("mlbridge_paid_jobs_total").await?;
    let batches = paid.metric("mlbridge_receipt_batches_total").await?;
    let vouchers = paid.metric("mlbridge_vouchers_accepted_total").await?;
    let sample = paid_client
        .infer("mlp-tiny", Some(1), request_for(repository.config("mlp-tiny", Some(1))?, "mlp-tiny", 0)?)
        .await?;
    let r = sample.response.receipt.context("a paid answer has a receipt")?;
    println!(
        "\nreceipts: {jobs} paid jobs answered with {batches} batch signatures ({:.2} jobs per signature) and {vouchers} \
         vouchers ({:.1} jobs per voucher); a receipt alone is {} bytes of CBOR, one in a batch of {} is {} bytes \
         (proof of {} hashes)",
        jobs / batches.max(1.0),
        jobs / vouchers.max(1.0),
        encode(&alone).len(),
        r.batch.count,
        encode(&r).len(),
        r.proof.len()
    );
    let (txs, gas, settled) = paid.settle().await?;
    println!(
        "settlement: {txs} redeemMany transaction(s), {gas} gas for {settled} paid jobs = {:.3} gas per inference",
        gas as f64 / settled.max(1) as f64
    );
    free.stop();
    paid.stop();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
