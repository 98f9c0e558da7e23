//! The inference benchmark: raw ONNX Runtime vs the in-process engine vs the HTTP API, dynamic batching on and off,
//! cache hit vs miss, cold start.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mlbridge_node::config::NodeConfig;
use mlbridge_node::inference::{Engine, ModelConfig, ModelRepository, OnnxRuntime};
use mlbridge_node::server::{RunningNode, start};
use mlbridge_sdk::client::{Client, ClientConfig, Strategy};
use mlbridge_sdk::net::NetConfig;
use mlbridge_sdk::{Tensor, TensorData};
use serde_json::json;

use crate::load::{self, Limits, Stats};

const MODELS: [(&str, u64, &str); 4] =
    [("minilm-l6", 2, "INT8"), ("minilm-l6", 1, "fp32"), ("orientation", 1, "fp32"), ("mlp-tiny", 1, "fp32")];
const CONCURRENCY: [usize; 3] = [1, 16, 64];
/// Sequence length of MiniLM requests.
const SEQ: usize = 128;

pub(crate) fn row(what: &str, path: &str, c: usize, s: &Stats, raw: Option<f64>) {
    let share = raw.map(|r| format!("{:>8.1}%", 100.0 * s.throughput() / r)).unwrap_or_else(|| "        -".into());
    println!(
        "| {what:<22} | {path:<16} | {c:>4} | {:>10.1} | {:>8.3} | {:>8.3} | {:>8.3} | {share} | {:>5} |",
        s.throughput(),
        s.p50_ms,
        s.p95_ms,
        s.p99_ms,
        s.errors
    );
}

/// A table's header; `compared` names what the share column compares each row with.
pub(crate) fn header(title: &str, compared: &str) {
    println!("\n### {title}\n");
    println!(
        "| model                  | path             | conc |  per s     | p50 ms   | p95 ms   | p99 ms   | {compared:<9} | errs  |"
    );
    println!(
        "|------------------------|------------------|------|------------|----------|----------|----------|-----------|-------|"
    );
}

pub(crate) async fn node(repo: &Path, edit: impl FnOnce(&mut NodeConfig)) -> Result<RunningNode> {
    let mut config = NodeConfig { model_repository: repo.to_owned(), ..NodeConfig::default() };
    config.http.listen = "127.0.0.1:0".parse()?;
    config.metrics.listen = "127.0.0.1:0".parse()?;
    config.http.max_body_bytes = 16 << 20;
    config.inference.queue_capacity = 1024;
    config.p2p.listen = vec!["/ip4/127.0.0.1/tcp/0".into()];
    config.p2p.mdns = false;
    // The benchmark's one load-generator peer is the whole load: no per-peer rate limit.
    config.p2p.max_requests_per_sec_per_peer = f64::MAX / 4.0;
    edit(&mut config);
    Ok(start(config).await?)
}

/// One request of batch 1 for the model: MiniLM gets `SEQ` tokens, others the config's example input.
pub(crate) fn request(engine: &Engine, name: &str, version: u64, salt: usize) -> Result<Vec<Tensor>> {
    request_for(engine.config(name, Some(version))?, name, salt)
}

/// [`request`] from the model's config.
pub(crate) fn request_for(config: &ModelConfig, name: &str, salt: usize) -> Result<Vec<Tensor>> {
    if name.starts_with("minilm") {
        let ids: Vec<i64> = (0..SEQ).map(|i| 1000 + ((i * 7919 + salt * 104_729) % 20_000) as i64).collect();
        return Ok(vec![
            Tensor::new("input_ids", vec![1, SEQ as i64], TensorData::Int64(ids))?,
            Tensor::new("attention_mask", vec![1, SEQ as i64], TensorData::Int64(vec![1; SEQ]))?,
        ]);
    }
    let mut inputs = config.example_inputs(1, 16);
    if salt > 0 {
        // Make the input unique (for cache-miss measurements).
        if let Some(t) = inputs.first_mut() {
            let (n, s, data) = t.clone().into_parts();
            if let TensorData::Fp32(mut v) = data {
                v[0] = salt as f32;
                *t = Tensor::new(n, s, TensorData::Fp32(v))?;
            }
        }
    }
    Ok(inputs)
}

pub(crate) fn kserve_body(inputs: &[Tensor]) -> Vec<u8> {
    let inputs: Vec<serde_json::Value> = inputs
        .iter()
        .map(|t| {
            let data = match t.data() {
                TensorData::Int64(v) => json!(v),
                TensorData::Fp32(v) => json!(v),
                other => json!(format!("{other:?}")),
            };
            json!({ "name": t.name(), "shape": t.shape(), "datatype": t.datatype(), "data": data })
        })
        .collect();
    serde_json::to_vec(&json!({ "inputs": inputs })).expect("json")
}

/// The same request with the binary tensor data extension: every input and output as raw little-endian bytes after
/// a JSON header. Returns the body and the JSON header's length.
fn kserve_binary_body(inputs: &[Tensor]) -> (Vec<u8>, usize) {
    let mut binary = Vec::new();
    let specs: Vec<serde_json::Value> = inputs
        .iter()
        .map(|t| {
            let start = binary.len();
            t.data().write_le(&mut binary);
            json!({ "name": t.name(), "shape": t.shape(), "datatype": t.datatype(),
                "parameters": { "binary_data_size": binary.len() - start } })
        })
        .collect();
    let mut body =
        serde_json::to_vec(&json!({ "inputs": specs, "parameters": { "binary_data_output": true } })).expect("json");
    let json_len = body.len();
    body.extend_from_slice(&binary);
    (body, json_len)
}

pub(crate) async fn http_load(client: &reqwest::Client, url: String, body: Vec<u8>, c: usize, limits: Limits) -> Stats {
    http_load_with(client, url, body, None, c, limits).await
}

/// HTTP load; `json_len` set: a binary-extension request with that JSON header length.
async fn http_load_with(
    client: &reqwest::Client,
    url: String,
    body: Vec<u8>,
    json_len: Option<usize>,
    c: usize,
    limits: Limits,
) -> Stats {
    let body = bytes_of(body);
    let client = client.clone();
    load::run(c, limits, move |_| {
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        async move {
            let req = match json_len {
                None => client.post(url).header("content-type", "application/json"),
                Some(n) => client
                    .post(url)
                    .header("content-type", "application/octet-stream")
                    .header(mlbridge_node::api::binary::HEADER_LENGTH, n),
            };
            match req.body(body).send().await {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            }
        }
    })
    .await
}

fn bytes_of(v: Vec<u8>) -> bytes::Bytes {
    bytes::Bytes::from(v)
}

/// Raw ONNX Runtime: a fresh session of the model (same config and threads as the node), `inputs` run in a loop on
/// a blocking thread until the budget is spent.
async fn raw_ort(
    repository: &ModelRepository,
    runtime: &OnnxRuntime,
    name: &str,
    version: u64,
    inputs: Vec<Tensor>,
    limits: Limits,
) -> Result<Stats> {
    let model = repository.load_config(runtime, repository.config(name, Some(version))?.clone())?;
    Ok(tokio::task::spawn_blocking(move || load::run_blocking(limits, |_| model.run(inputs.clone()).is_ok())).await?)
}

async fn metric(node: &RunningNode, name: &str) -> Result<f64> {
    let text = reqwest::get(format!("http://{}/metrics", node.metrics_addr)).await?.text().await?;
    Ok(text
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0))
}

pub(crate) async fn inference(repo: &Path, node_bin: &Path, limits: Limits) -> Result<()> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(128).build()?;
    println!("# Inference benchmark");
    println!(
        "\n{} CPUs, {} s or {} requests per row, batch 1 per request, MiniLM sequences of {SEQ} tokens; the load \
         generator runs on the same machine. Result cache off except in the cache section.",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        limits.seconds,
        limits.max_requests
    );

    // ---------------------------------------------------------------- raw vs engine vs HTTP
    let n = node(repo, |c| c.cache.enabled = false).await?;
    let runtime = OnnxRuntime::init(None)?;
    let repository = ModelRepository::open(repo)?;
    header("Raw ONNX Runtime vs in-process engine vs HTTP (KServe v2 JSON), dynamic batching on", "of raw b1");
    println!(
        "\"per s\" is requests per second, except for the raw bN rows: samples per second of raw ONNX Runtime running \
         N stacked samples per call (the ceiling batching can reach at that batch size). \"of raw b1\" compares every \
         row with raw ONNX Runtime at batch 1, one call at a time.\n"
    );
    for (name, version, label) in MODELS {
        let what = format!("{name}/{version} {label}");
        let inputs = request(&n.engine, name, version, 0)?;
        let raw = raw_ort(&repository, &runtime, name, version, inputs.clone(), limits).await?;
        row(&what, "raw ORT", 1, &raw, Some(raw.throughput()));
        // The ceiling of batched execution: raw ONNX Runtime on stacked inputs (throughput in samples/s).
        for b in [8usize, 16, 32, 64] {
            if b > repository.config(name, Some(version))?.max_batch_size {
                continue;
            }
            let stacked: Vec<Tensor> = inputs
                .iter()
                .map(|t| {
                    let mut shape = t.shape().to_vec();
                    shape[0] = b as i64;
                    let data = match t.data() {
                        TensorData::Fp32(v) => TensorData::Fp32(v.repeat(b)),
                        TensorData::Int64(v) => TensorData::Int64(v.repeat(b)),
                        other => other.clone(),
                    };
                    Tensor::new(t.name(), shape, data)
                })
                .collect::<std::result::Result<_, _>>()?;
            let s = raw_ort(&repository, &runtime, name, version, stacked, limits).await?;
            let samples = Stats { requests: s.requests * b, ..s };
            row(&what, &format!("raw ORT b{b} smp/s"), 1, &samples, Some(raw.throughput()));
        }
        for c in CONCURRENCY {
            let (engine, inputs) = (n.engine.clone(), inputs.clone());
            let s = load::run(c, limits, move |_| {
                let (engine, inputs) = (engine.clone(), inputs.clone());
                async move { engine.infer(name, Some(version), inputs).await.is_ok() }
            })
            .await;
            row(&what, "engine", c, &s, Some(raw.throughput()));
        }
        let url = format!("http://{}/v2/models/{name}/versions/{version}/infer", n.http_addr);
        for c in CONCURRENCY {
            let s = http_load(&client, url.clone(), kserve_body(&inputs), c, limits).await;
            row(&what, "http", c, &s, Some(raw.throughput()));
        }
        let (body, json_len) = kserve_binary_body(&inputs);
        for c in CONCURRENCY {
            let s = http_load_with(&client, url.clone(), body.clone(), Some(json_len), c, limits).await;
            row(&what, "http binary", c, &s, Some(raw.throughput()));
        }
    }

    // ---------------------------------------------------------------- batching on vs off
    println!("\n### Dynamic batching on vs off (mlp-tiny/1, concurrency 64)\n");
    println!("| batching | path   |  req/s     | p50 ms   | p99 ms   | avg batch (inferences/executions) |");
    println!("|----------|--------|------------|----------|----------|-----------------------------------|");
    let off = node(repo, |c| {
        c.cache.enabled = false;
        c.inference.batching = false;
    })
    .await?;
    let mut on_off = Vec::new();
    for (label, nd) in [("on", &n), ("off", &off)] {
        let inputs = request(&nd.engine, "mlp-tiny", 1, 0)?;
        for path in ["engine", "http"] {
            let inf0 = metric(nd, "mlbridge_inferences_total{model=\"mlp-tiny/1\"}").await?;
            let ex0 = metric(nd, "mlbridge_executions_total{model=\"mlp-tiny/1\"}").await?;
            let s = if path == "engine" {
                let (engine, inputs) = (nd.engine.clone(), inputs.clone());
                load::run(64, limits, move |_| {
                    let (engine, inputs) = (engine.clone(), inputs.clone());
                    async move { engine.infer("mlp-tiny", Some(1), inputs).await.is_ok() }
                })
                .await
            } else {
                let url = format!("http://{}/v2/models/mlp-tiny/versions/1/infer", nd.http_addr);
                http_load(&client, url, kserve_body(&inputs), 64, limits).await
            };
            let inf = metric(nd, "mlbridge_inferences_total{model=\"mlp-tiny/1\"}").await? - inf0;
            let ex = metric(nd, "mlbridge_executions_total{model=\"mlp-tiny/1\"}").await? - ex0;
            println!(
                "| {label:<8} | {path:<6} | {:>10.1} | {:>8.3} | {:>8.3} | {:>33.2} |",
                s.throughput(),
                s.p50_ms,
                s.p99_ms,
                if ex > 0.0 { inf / ex } else { 0.0 }
            );
            on_off.push((label, path, s.throughput()));
        }
    }
    for path in ["engine", "http"] {
        let on = on_off.iter().find(|x| x.0 == "on" && x.1 == path).map_or(0.0, |x| x.2);
        let off = on_off.iter().find(|x| x.0 == "off" && x.1 == path).map_or(1.0, |x| x.2);
        println!("\nBatching gain ({path}): {:+.0}% throughput", 100.0 * (on / off - 1.0));
    }
    off.shutdown.cancel();
    n.shutdown.cancel();

    // ---------------------------------------------------------------- cache hit vs miss
    println!("\n### Result cache: hit vs miss (HTTP, concurrency 1)\n");
    println!("| model              | miss p50 ms | hit p50 ms | hit vs miss |");
    println!("|--------------------|-------------|------------|-------------|");
    let cached = node(repo, |_| {}).await?;
    for (name, version) in [("minilm-l6", 2u64), ("mlp-tiny", 1)] {
        let url = format!("http://{}/v2/models/{name}/versions/{version}/infer", cached.http_addr);
        let bodies: Vec<bytes::Bytes> = (1..=400)
            .map(|salt| request(&cached.engine, name, version, salt).map(|r| bytes_of(kserve_body(&r))))
            .collect::<Result<_>>()?;
        let bodies = Arc::new(bodies);
        let (c2, u2, b2) = (client.clone(), url.clone(), bodies.clone());
        let short = Limits { seconds: limits.seconds, max_requests: bodies.len() };
        let miss = load::run(1, short, move |i| {
            let (c, u, b) = (c2.clone(), u2.clone(), b2[i % b2.len()].clone());
            async move {
                c.post(u)
                    .header("content-type", "application/json")
                    .body(b)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await;
        let hit = http_load(&client, url, bodies[0].to_vec(), 1, limits).await;
        println!(
            "| {:<18} | {:>11.3} | {:>10.3} | {:>+10.0}% |",
            format!("{name}/{version}"),
            miss.p50_ms,
            hit.p50_ms,
            100.0 * (hit.p50_ms / miss.p50_ms - 1.0)
        );
    }
    cached.shutdown.cancel();

    // ---------------------------------------------------------------- cold start
    println!("\n### Cold start (`mlbridge-node serve`, all models eager)\n");
    if !node_bin.is_file() {
        bail!("{} not found; build it with `cargo build --release -p mlbridge-node`", node_bin.display());
    }
    let started = Instant::now();
    let mut child = Command::new(node_bin)
        .args([
            "serve",
            "--http-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--p2p-listen",
            "/ip4/127.0.0.1/tcp/0",
            "--no-mdns",
            "--model-repository",
        ])
        .arg(repo)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the node binary")?;
    let stdout = child.stdout.take().context("node stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let listening = started.elapsed();
    let addr =
        line.split("http://").nth(1).and_then(|s| s.split_whitespace().next()).context("API address in the banner")?;
    let metrics = line.split("http://").nth(2).and_then(|s| s.split_whitespace().next()).context("metrics address")?;
    let ready_url = format!("http://{addr}/v2/health/ready");
    while !reqwest::get(&ready_url).await.is_ok_and(|r| r.status().is_success()) {
        if started.elapsed() > Duration::from_secs(60) {
            bail!("the node did not become ready in 60 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ready = started.elapsed();
    let text = reqwest::get(format!("http://{metrics}")).await?.text().await?;
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "Process start to listening: {:.0} ms; to ready (HTTP 200 on /v2/health/ready): {:.0} ms\n",
        listening.as_secs_f64() * 1e3,
        ready.as_secs_f64() * 1e3
    );
    println!("| model            | load ms (sha256 check + session) |");
    println!("|------------------|----------------------------------|");
    for l in text.lines().filter(|l| l.starts_with("mlbridge_model_load_seconds{")) {
        let model = l.split('"').nth(1).unwrap_or("?");
        let secs: f64 = l.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        println!("| {model:<16} | {:>32.1} |", secs * 1e3);
    }
    Ok(())
}

/// A network client (round robin) that has seen `n`'s advert.
pub(crate) async fn client_for(n: &RunningNode) -> Result<Client> {
    let p2p = n.p2p.as_ref().context("p2p is enabled")?;
    let mut addrs = p2p.listen_addrs().await?;
    while addrs.is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
        addrs = p2p.listen_addrs().await?;
    }
    client_bootstrapped(addrs).await
}

/// A client bootstrapped to `addrs`, once it has seen a node's advert for mlp-tiny.
pub(crate) async fn client_bootstrapped(addrs: Vec<libp2p::Multiaddr>) -> Result<Client> {
    let net = NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
        bootstrap: addrs,
        mdns: false,
        heartbeat: Duration::from_millis(200),
        ..NetConfig::default()
    };
    let client = Client::start(ClientConfig { net, strategy: Strategy::RoundRobin, ..ClientConfig::default() })?;
    if client.wait_for_nodes("mlp-tiny", 1, Duration::from_secs(30)).await?.is_empty() {
        bail!("the client did not see the node's advert");
    }
    Ok(client)
}

/// Throughput and latency over libp2p next to HTTP and raw ONNX Runtime, for mlp-tiny and MiniLM INT8.
pub(crate) async fn p2p(repo: &Path, limits: Limits) -> Result<()> {
    let http = reqwest::Client::builder().pool_max_idle_per_host(128).build()?;
    println!("# P2P benchmark");
    println!(
        "\n{} CPUs, {} s per row, batch 1 per request; node and client in one process on 127.0.0.1 (libp2p over TCP, \
         noise, yamux); result cache off.",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        limits.seconds
    );
    let n = node(repo, |c| c.cache.enabled = false).await?;
    let client = client_for(&n).await?;
    let runtime = OnnxRuntime::init(None)?;
    let repository = ModelRepository::open(repo)?;
    header("libp2p vs HTTP vs raw ONNX Runtime", "of raw b1");
    for (name, version, label) in [("mlp-tiny", 1u64, "fp32"), ("minilm-l6", 2, "INT8")] {
        let what = format!("{name}/{version} {label}");
        let inputs = request(&n.engine, name, version, 0)?;
        let raw = raw_ort(&repository, &runtime, name, version, inputs.clone(), limits).await?;
        row(&what, "raw ORT", 1, &raw, Some(raw.throughput()));
        for c in CONCURRENCY {
            let (cl, inputs) = (client.clone(), inputs.clone());
            let s = load::run(c, limits, move |_| {
                let (cl, inputs) = (cl.clone(), inputs.clone());
                async move { cl.infer(name, Some(version), inputs).await.is_ok() }
            })
            .await;
            row(&what, "p2p", c, &s, Some(raw.throughput()));
        }
        let url = format!("http://{}/v2/models/{name}/versions/{version}/infer", n.http_addr);
        for c in CONCURRENCY {
            let s = http_load(&http, url.clone(), kserve_body(&inputs), c, limits).await;
            row(&what, "http", c, &s, Some(raw.throughput()));
        }
    }
    n.shutdown.cancel();
    Ok(())
}
