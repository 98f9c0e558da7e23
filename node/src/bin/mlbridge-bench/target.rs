//! The node a benchmark measures: started in this process, or as a separate `mlbridge-node` process pinned to one
//! core (`taskset -c 0`) while the load generator runs on the other, so the node's own cost per job is visible.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};
use libp2p::Multiaddr;
use mlbridge_node::server::RunningNode;
use mlbridge_sdk::client::Client;

/// What a paid node needs.
pub(crate) struct PaidSetup {
    pub(crate) operator_key_hex: String,
    pub(crate) rpc_url: String,
    pub(crate) deployment: PathBuf,
    pub(crate) ledger: PathBuf,
}

/// A node under load.
pub(crate) enum Target {
    /// In this process.
    Local(RunningNode),
    /// A separate process pinned to core 0.
    Pinned { child: Child, p2p: Multiaddr, http: SocketAddr, metrics: String, ledger: Option<PathBuf> },
}

impl Target {
    /// Start a node serving `repo` (result cache off, no per-peer rate limit: the load generator is one peer).
    pub(crate) async fn start(
        pinned: Option<&Path>,
        repo: &Path,
        dir: &Path,
        name: &str,
        paid: Option<PaidSetup>,
    ) -> Result<Self> {
        let Some(node_bin) = pinned else {
            let node = crate::scenarios::node(repo, |c| {
                c.cache.enabled = false;
                if let Some(p) = paid {
                    c.operator_key = Some(p.operator_key_hex);
                    let pc = &mut c.payment;
                    pc.enabled = true;
                    pc.rpc_url = p.rpc_url;
                    pc.deployment = Some(p.deployment);
                    pc.ledger = p.ledger;
                    pc.poll_interval_ms = 200;
                    pc.settle_interval_secs = 3600.0;
                }
            })
            .await?;
            return Ok(Self::Local(node));
        };
        let mut toml = format!(
            r#"model_repository = "{repo}"
[http]
listen = "127.0.0.1:0"
max_body_bytes = 16777216
[metrics]
listen = "127.0.0.1:0"
[cache]
enabled = false
[inference]
queue_capacity = 1024
[p2p]
listen = ["/ip4/127.0.0.1/tcp/0"]
mdns = false
max_requests_per_sec_per_peer = 1e12
"#,
            repo = repo.display()
        );
        let ledger = paid.as_ref().map(|p| p.ledger.clone());
        if let Some(p) = paid {
            toml = format!("operator_key = \"{}\"\n{toml}", p.operator_key_hex);
            toml.push_str(&format!(
                "[payment]\nenabled = true\nrpc_url = \"{}\"\ndeployment = \"{}\"\nledger = \"{}\"\n\
                 poll_interval_ms = 200\nsettle_interval_secs = 3600.0\n",
                p.rpc_url,
                p.deployment.display(),
                p.ledger.display()
            ));
        }
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, toml)?;
        let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
        let mut child = Command::new("taskset")
            .args(["-c", "0"])
            .arg(node_bin)
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("starting the node with taskset (util-linux)")?;
        let mut lines = BufReader::new(child.stdout.take().context("node stdout")?).lines();
        let (mut p2p, mut api) = (None, None);
        while p2p.is_none() {
            let Some(line) = lines.next() else {
                bail!("the node exited; see {}", dir.join(format!("{name}.log")).display())
            };
            let line = line?;
            if let Some(rest) = line.strip_prefix("mlbridge-node: API on http://") {
                let mut parts = rest.split("  metrics on http://");
                let http: SocketAddr = parts.next().context("api address")?.trim().parse()?;
                let metrics = parts.next().context("metrics address")?.trim_end_matches("/metrics").to_owned();
                api = Some((http, metrics));
            }
            if let Some(addr) = line.strip_prefix("mlbridge-node: p2p on ") {
                p2p = Some(addr.parse()?);
            }
        }
        let (http, metrics) = api.context("the node printed no API address")?;
        Ok(Self::Pinned { child, p2p: p2p.context("p2p address")?, http, metrics, ledger })
    }

    /// A client bootstrapped to the node, once it has seen the node's advert.
    pub(crate) async fn client(&self) -> Result<Client> {
        match self {
            Self::Local(n) => crate::scenarios::client_for(n).await,
            Self::Pinned { p2p, .. } => crate::scenarios::client_bootstrapped(vec![p2p.clone()]).await,
        }
    }

    /// The node's HTTP API.
    pub(crate) fn http(&self) -> SocketAddr {
        match self {
            Self::Local(n) => n.http_addr,
            Self::Pinned { http, .. } => *http,
        }
    }

    /// One metric's value from the node's `/metrics`.
    pub(crate) async fn metric(&self, name: &str) -> Result<f64> {
        let addr = match self {
            Self::Local(n) => n.metrics_addr.to_string(),
            Self::Pinned { metrics, .. } => metrics.clone(),
        };
        let text = reqwest::get(format!("http://{addr}/metrics")).await?.text().await?;
        Ok(text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0))
    }

    /// Redeem everything now; returns (transactions, gas, jobs).
    pub(crate) async fn settle(&self) -> Result<(usize, u64, u64)> {
        let report: serde_json::Value = match self {
            Self::Local(n) => {
                let service = n.payments.as_ref().context("paid mode")?;
                serde_json::to_value(service.settler().settle_now().await?)?
            }
            Self::Pinned { metrics, ledger, .. } => {
                let ledger = ledger.as_ref().context("paid mode")?;
                let token = std::fs::read_to_string(mlbridge_node::api::admin::token_path(ledger))?;
                let resp = reqwest::Client::new()
                    .post(format!("http://{metrics}/admin/redeem"))
                    .bearer_auth(token.trim())
                    .send()
                    .await?;
                resp.error_for_status()?.json().await?
            }
        };
        let txs = report["transactions"].as_array().cloned().unwrap_or_default();
        let sum = |k: &str| txs.iter().map(|t| t[k].as_u64().unwrap_or(0)).sum::<u64>();
        Ok((txs.len(), sum("gas_used"), sum("jobs")))
    }

    /// Stop the node.
    pub(crate) fn stop(self) {
        match self {
            Self::Local(n) => n.shutdown.cancel(),
            Self::Pinned { mut child, .. } => {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
