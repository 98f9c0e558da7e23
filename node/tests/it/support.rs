//! Starting real nodes on port 0, and test model repositories built from links to the real model files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mlbridge_node::config::NodeConfig;
use mlbridge_node::server::{RunningNode, start};
use serde_json::Value;

pub fn models_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}

/// A node on 127.0.0.1 port 0 with `edit` applied to the default config.
pub async fn start_node(edit: impl FnOnce(&mut NodeConfig)) -> RunningNode {
    let mut config = NodeConfig { model_repository: models_root(), ..NodeConfig::default() };
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.metrics.listen = "127.0.0.1:0".parse().unwrap();
    config.p2p.listen = vec!["/ip4/127.0.0.1/tcp/0".into()];
    config.p2p.mdns = false;
    edit(&mut config);
    start(config).await.unwrap()
}

/// A repository with the given real model versions (files linked, configs copied) and `edit` applied to each config.
pub fn repo_with(models: &[(&str, u64)], edit: impl Fn(&str) -> String) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for (name, version) in models {
        let src = models_root().join(name).join(version.to_string());
        let dst = tmp.path().join(name).join(version.to_string());
        std::fs::create_dir_all(&dst).unwrap();
        for entry in std::fs::read_dir(&src).unwrap() {
            let path = entry.unwrap().path();
            let file = path.file_name().unwrap().to_owned();
            if file == "config.toml" {
                std::fs::write(dst.join(&file), edit(&std::fs::read_to_string(&path).unwrap())).unwrap();
            } else {
                std::os::unix::fs::symlink(&path, dst.join(&file)).unwrap();
            }
        }
    }
    tmp
}

pub fn url(node: &RunningNode, path: &str) -> String {
    format!("http://{}{}", node.http_addr, path)
}

pub async fn post(node: &RunningNode, path: &str, body: &Value) -> (u16, Value) {
    let resp = reqwest::Client::new().post(url(node, path)).json(body).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

pub async fn get(node: &RunningNode, path: &str) -> (u16, Value) {
    let resp = reqwest::get(url(node, path)).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A KServe v2 request for mlp-tiny with `batch` samples whose values start at `seed`.
pub fn mlp_request(batch: usize, seed: f32) -> Value {
    let data: Vec<f32> = (0..batch * 256).map(|i| seed + (i % 97) as f32 / 97.0).collect();
    serde_json::json!({ "inputs": [{ "name": "input", "shape": [batch, 256], "datatype": "FP32", "data": data }] })
}

pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

pub async fn metrics_text(node: &RunningNode) -> String {
    reqwest::get(format!("http://{}/metrics", node.metrics_addr)).await.unwrap().text().await.unwrap()
}

/// The node's p2p listen addresses (with /p2p/<id>), once it listens.
pub async fn addrs(node: &RunningNode) -> Vec<libp2p::Multiaddr> {
    let p2p = node.p2p.as_ref().unwrap();
    for _ in 0..100 {
        let a = p2p.listen_addrs().await.unwrap();
        if !a.is_empty() {
            return a;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("node did not listen");
}

/// A network client bootstrapped to `boot` on 127.0.0.1, with `request_timeout` per request.
pub async fn client_with_timeout(
    boot: &RunningNode,
    strategy: mlbridge_sdk::client::Strategy,
    request_timeout: std::time::Duration,
) -> mlbridge_sdk::client::Client {
    use mlbridge_sdk::client::{Client, ClientConfig};
    use mlbridge_sdk::net::NetConfig;
    let net = NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap: addrs(boot).await,
        mdns: false,
        heartbeat: std::time::Duration::from_millis(200),
        ..NetConfig::default()
    };
    Client::start(ClientConfig { net, strategy, request_timeout, ..ClientConfig::default() }).unwrap()
}

/// Poll the node's `/metrics` every 20 ms until the sample `name_and_labels` satisfies `cond`; fail the test after
/// `limit`. Returns the value seen.
pub async fn wait_metric(
    node: &RunningNode,
    name_and_labels: &str,
    limit: Duration,
    cond: impl Fn(f64) -> bool,
) -> f64 {
    let start = std::time::Instant::now();
    loop {
        let v = metric(&metrics_text(node).await, name_and_labels);
        if cond(v) {
            return v;
        }
        assert!(start.elapsed() < limit, "{name_and_labels} is {v}, still not as awaited after {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Poll `cond` every 20 ms until it holds; fail the test after `limit` (instead of sleeping a guessed time).
pub async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "condition not met within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
