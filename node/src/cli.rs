//! Command-line interface of `mlbridge-node`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};

use crate::Result;
use crate::config::NodeConfig;
use crate::inference::{ModelRepository, OnnxRuntime};

/// ML Bridge node: serve INT8 ONNX models for paid inference.
#[derive(Debug, Parser)]
#[command(name = "mlbridge-node", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the model repository: KServe v2 HTTP API, embeddings, metrics.
    Serve(Box<ServeArgs>),
    /// Load every model in the repository, verify its sha256, run one inference and print a table.
    Models(InferenceArgs),
    /// Register this node on chain: stake, PeerId (from the identity file) and a metadata URI.
    Register {
        /// Node, key and chain.
        #[command(flatten)]
        operator: crate::operator::OperatorArgs,
        /// Stake in ETH (default: the contract's minimum).
        #[arg(long, default_value = "")]
        stake: String,
        /// Where the node describes itself (models, region, contact).
        #[arg(long, default_value = "")]
        metadata_uri: String,
    },
    /// Stake, channels, unredeemed value and the last settlements with their confirmations.
    Status(crate::operator::OperatorArgs),
    /// Read a node's metrics (live, or a saved snapshot) and name each problem's likely cause and fix, with the
    /// numbers behind it. Exits non-zero when it finds any.
    Doctor {
        /// The node's metrics endpoint (read twice, `--interval` apart).
        #[arg(long, default_value = "http://127.0.0.1:9100/metrics")]
        metrics_url: String,
        /// A saved copy of a node's /metrics instead (e.g. `curl -s host:9100/metrics > snapshot.prom`).
        #[arg(long, value_name = "FILE")]
        snapshot: Option<PathBuf>,
        /// Seconds between the two reads of a live node.
        #[arg(long, default_value_t = 5.0)]
        interval: f64,
        /// The node's config file: the fixes then name the settings and their current values.
        #[arg(long, env = "MLBRIDGE_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Redeem vouchers on chain.
    Redeem {
        /// Node, key and chain.
        #[command(flatten)]
        operator: crate::operator::OperatorArgs,
        /// Redeem every channel's best voucher now (instead of waiting for the settlement threshold).
        #[arg(long, required = true)]
        now: bool,
    },
}

/// Where models and ONNX Runtime are.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Models")]
pub struct InferenceArgs {
    /// Model repository folder (`<name>/<version>/{model.onnx,config.toml}`) [default: models].
    #[arg(long, env = "MLBRIDGE_MODEL_REPOSITORY", value_name = "DIR")]
    pub model_repository: Option<PathBuf>,
    /// ONNX Runtime shared library (default: $ORT_DYLIB_PATH, then the project's .venv).
    #[arg(long, env = "MLBRIDGE_ONNXRUNTIME", value_name = "PATH")]
    pub onnxruntime: Option<PathBuf>,
}

/// `serve` options; each overrides the config file.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML config file (every key optional; flags override it).
    #[arg(long, env = "MLBRIDGE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Models and runtime.
    #[command(flatten)]
    pub models: InferenceArgs,
    /// HTTP API listen address [default: 127.0.0.1:8000].
    #[arg(long, env = "MLBRIDGE_HTTP_LISTEN", value_name = "ADDR", help_heading = "HTTP")]
    pub http_listen: Option<SocketAddr>,
    /// Largest request body, bytes [default: 4194304].
    #[arg(long, env = "MLBRIDGE_MAX_BODY_BYTES", help_heading = "HTTP")]
    pub max_body_bytes: Option<usize>,
    /// Metrics listen address [default: 127.0.0.1:9100].
    #[arg(long, env = "MLBRIDGE_METRICS_LISTEN", value_name = "ADDR", help_heading = "Metrics")]
    pub metrics_listen: Option<SocketAddr>,
    /// Turn dynamic batching off (every request runs alone).
    #[arg(long, env = "MLBRIDGE_NO_BATCHING", help_heading = "Inference")]
    pub no_batching: bool,
    /// Requests queued per model before answering "overloaded" [default: 256].
    #[arg(long, env = "MLBRIDGE_QUEUE_CAPACITY", help_heading = "Inference")]
    pub queue_capacity: Option<usize>,
    /// Intra-op threads for every model (overrides each config.toml).
    #[arg(long, env = "MLBRIDGE_THREADS", help_heading = "Inference")]
    pub threads: Option<usize>,
    /// Turn the result cache off.
    #[arg(long, env = "MLBRIDGE_NO_CACHE", help_heading = "Cache")]
    pub no_cache: bool,
    /// In-memory cache capacity, MiB [default: 64].
    #[arg(long, env = "MLBRIDGE_CACHE_MIB", help_heading = "Cache")]
    pub cache_mib: Option<u64>,
    /// Cache entry lifetime, seconds [default: 300].
    #[arg(long, env = "MLBRIDGE_CACHE_TTL_SECS", help_heading = "Cache")]
    pub cache_ttl_secs: Option<u64>,
    /// Share the cache through Redis at this URL (e.g. redis://127.0.0.1:6379).
    #[arg(long, env = "MLBRIDGE_REDIS_URL", hide_env_values = true, help_heading = "Cache")]
    pub redis_url: Option<String>,
    /// p2p listen multiaddr (repeatable) [default: /ip4/0.0.0.0/tcp/4001 and /ip4/0.0.0.0/udp/4001/quic-v1].
    #[arg(long = "p2p-listen", env = "MLBRIDGE_P2P_LISTEN", value_delimiter = ',', help_heading = "P2P")]
    pub p2p_listen: Vec<String>,
    /// Bootstrap peer multiaddr with /p2p/<id> (repeatable).
    #[arg(long, env = "MLBRIDGE_BOOTSTRAP", value_delimiter = ',', help_heading = "P2P")]
    pub bootstrap: Vec<String>,
    /// Do not discover peers with mDNS.
    #[arg(long, env = "MLBRIDGE_NO_MDNS", help_heading = "P2P")]
    pub no_mdns: bool,
    /// Do not join the p2p network (HTTP only).
    #[arg(long, env = "MLBRIDGE_NO_P2P", help_heading = "P2P")]
    pub no_p2p: bool,
    /// libp2p identity file (created if missing).
    #[arg(long, env = "MLBRIDGE_IDENTITY_FILE", help_heading = "P2P")]
    pub identity_file: Option<PathBuf>,
    /// Operator key in an encrypted keystore file (`mlbridge key new`): signs adverts and receipts; channels pay it.
    #[arg(long, env = "MLBRIDGE_OPERATOR_KEYSTORE", value_name = "FILE", help_heading = "P2P")]
    pub operator_keystore: Option<PathBuf>,
    /// The keystore's password file (first line); else $MLBRIDGE_KEYSTORE_PASSWORD, else a prompt.
    #[arg(long, env = "MLBRIDGE_OPERATOR_PASSWORD_FILE", value_name = "FILE", help_heading = "P2P")]
    pub operator_password_file: Option<PathBuf>,
    /// Operator private key (hex), for devnets only (anvil's well-known keys); use --operator-keystore.
    #[arg(long, env = "MLBRIDGE_OPERATOR_KEY", hide_env_values = true, help_heading = "P2P")]
    pub operator_key: Option<String>,
}

impl ServeArgs {
    /// The config file (or defaults) with these flags applied on top.
    pub fn into_config(self) -> Result<NodeConfig> {
        let mut c = match &self.config {
            Some(path) => NodeConfig::load(path)?,
            None => NodeConfig::default(),
        };
        if let Some(v) = self.models.model_repository {
            c.model_repository = v;
        }
        if let Some(v) = self.models.onnxruntime {
            c.onnxruntime = Some(v);
        }
        if let Some(v) = self.http_listen {
            c.http.listen = v;
        }
        if let Some(v) = self.max_body_bytes {
            c.http.max_body_bytes = v;
        }
        if let Some(v) = self.metrics_listen {
            c.metrics.listen = v;
        }
        if self.no_batching {
            c.inference.batching = false;
        }
        if let Some(v) = self.queue_capacity {
            c.inference.queue_capacity = v;
        }
        if let Some(v) = self.threads {
            c.inference.threads = Some(v);
        }
        if self.no_cache {
            c.cache.enabled = false;
        }
        if let Some(v) = self.cache_mib {
            c.cache.capacity_mib = v;
        }
        if let Some(v) = self.cache_ttl_secs {
            c.cache.ttl_secs = v;
        }
        if let Some(v) = self.redis_url {
            c.cache.redis_url = Some(v);
        }
        if !self.p2p_listen.is_empty() {
            c.p2p.listen = self.p2p_listen;
        }
        if !self.bootstrap.is_empty() {
            c.p2p.bootstrap = self.bootstrap;
        }
        if self.no_mdns {
            c.p2p.mdns = false;
        }
        if self.no_p2p {
            c.p2p.enabled = false;
        }
        if let Some(v) = self.identity_file {
            c.p2p.identity_file = Some(v);
        }
        if let Some(v) = self.operator_key {
            c.operator_key = Some(v);
        }
        if let Some(v) = self.operator_keystore {
            c.operator_keystore = Some(v);
        }
        if let Some(v) = self.operator_password_file {
            c.operator_password_file = Some(v);
        }
        Ok(c)
    }
}

/// Run a parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => crate::server::run(args.into_config()?).await,
        Command::Models(args) => tokio::task::spawn_blocking(move || models(&args))
            .await
            .map_err(|e| crate::Error::LoadFailed { model: "*".into(), reason: e.to_string() })?,
        Command::Register { operator, stake, metadata_uri } => {
            crate::operator::register(&operator, &stake, &metadata_uri).await
        }
        Command::Status(operator) => crate::operator::status(&operator).await,
        Command::Redeem { operator, .. } => crate::operator::redeem_now(&operator).await,
        Command::Doctor { metrics_url, snapshot, interval, config } => {
            let context = config.as_deref().map(crate::doctor::Context::load).transpose()?;
            let (findings, checked) = match snapshot {
                Some(path) => {
                    let text = std::fs::read_to_string(&path).map_err(|e| crate::Error::Config {
                        path: path.clone(),
                        reason: format!("cannot read the metrics snapshot: {e}"),
                    })?;
                    let snapshot = crate::doctor::Snapshot::parse(&text);
                    (crate::doctor::diagnose(&snapshot, None, context.as_ref()), path.display().to_string())
                }
                None => {
                    let secs = if interval.is_finite() { interval.clamp(0.5, 600.0) } else { 5.0 };
                    let every = std::time::Duration::from_secs_f64(secs);
                    (crate::doctor::diagnose_live(&metrics_url, every, context.as_ref()).await?, metrics_url)
                }
            };
            print!("{}", crate::doctor::render(&findings, &checked));
            match findings.len() {
                0 => Ok(()),
                n => Err(crate::Error::ProblemsFound(n)),
            }
        }
    }
}

fn models(args: &InferenceArgs) -> Result<()> {
    let runtime = OnnxRuntime::init(args.onnxruntime.as_deref())?;
    let root = args.model_repository.clone().unwrap_or_else(|| PathBuf::from("models"));
    let repo = ModelRepository::open(&root)?;
    println!("ONNX Runtime: {}", runtime.library().display());
    println!("Model repository: {}", repo.root().display());
    println!(
        "{:<16} {:<9} {:<16} {:>8} {:>9} {:>15}  outputs",
        "model", "precision", "model id", "load ms", "infer ms", "price (wei)"
    );
    let mut failures = 0;
    for config in repo.configs() {
        let key = config.key();
        if config.task == crate::inference::Task::TextGeneration {
            // A decoder: load it and prefill a few tokens.
            let started = Instant::now();
            let outcome = repo.read_verified(config).and_then(|bytes| {
                let decoder = crate::generate::Decoder::from_bytes(&runtime, config, &bytes)?;
                let load = started.elapsed();
                let mut cache = crate::generate::KvCache::new(decoder.shape(), 16);
                let tokens: Vec<u32> = (1..=16).collect();
                let started = Instant::now();
                let logits = decoder.step(&mut [crate::generate::decoder::Row {
                    tokens: &tokens,
                    cache: &mut cache,
                    logits_at: vec![15],
                }])?;
                Ok((load, started.elapsed(), logits.first().map_or(0, Vec::len)))
            });
            match outcome {
                Ok((load, infer, vocab)) => println!(
                    "{:<16} {:<9} {:<16} {:>8.1} {:>9.2} {:>15}  logits [1, {vocab}] after a 16-token prefill",
                    key,
                    config.precision,
                    &config.sha256.to_string()[..16],
                    load.as_secs_f64() * 1e3,
                    infer.as_secs_f64() * 1e3,
                    config.generation.as_ref().map_or(0, |g| g.price_wei_per_output_token),
                ),
                Err(err) => {
                    failures += 1;
                    println!("{key:<16} FAILED: {err}");
                }
            }
            continue;
        }
        let outcome = repo.load(&runtime, &config.name, Some(config.version)).and_then(|model| {
            let inputs = config.example_inputs(1, 16);
            let started = Instant::now();
            let outputs = model.run(inputs)?;
            Ok((model, started.elapsed(), outputs))
        });
        match outcome {
            Ok((model, infer, outputs)) => {
                let shapes: Vec<String> = outputs.iter().map(|t| format!("{} {:?}", t.name(), t.shape())).collect();
                println!(
                    "{:<16} {:<9} {:<16} {:>8.1} {:>9.2} {:>15}  {}",
                    key,
                    config.precision,
                    &model.id().to_string()[..16],
                    model.load_time().as_secs_f64() * 1e3,
                    infer.as_secs_f64() * 1e3,
                    config.price_wei,
                    shapes.join(", ")
                );
            }
            Err(err) => {
                failures += 1;
                println!("{key:<16} FAILED: {err}");
            }
        }
    }
    if failures > 0 {
        return Err(crate::Error::Config {
            path: repo.root().to_owned(),
            reason: format!("{failures} model(s) failed to load or run; see the table above"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn flags_override_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(&file, "model_repository = \"/srv/models\"\n[cache]\nttl_secs = 9\ncapacity_mib = 8\n").unwrap();
        let cli = Cli::try_parse_from([
            "mlbridge-node",
            "serve",
            "--config",
            file.to_str().unwrap(),
            "--http-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--no-batching",
            "--queue-capacity",
            "4",
            "--threads",
            "1",
            "--cache-mib",
            "2",
            "--redis-url",
            "redis://127.0.0.1:6379",
            "--p2p-listen",
            "/ip4/127.0.0.1/tcp/0",
            "--no-mdns",
            "--bootstrap",
            "/ip4/127.0.0.1/tcp/4001",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else { panic!("serve") };
        let c = args.into_config().unwrap();
        assert_eq!(c.model_repository, PathBuf::from("/srv/models"), "from the file");
        assert_eq!(c.cache.ttl_secs, 9, "from the file");
        assert_eq!(c.cache.capacity_mib, 2, "flag wins");
        assert_eq!(c.http.listen.port(), 0);
        assert!(!c.inference.batching);
        assert_eq!(c.inference.queue_capacity, 4);
        assert_eq!(c.inference.threads, Some(1));
        assert_eq!(c.cache.redis_url.as_deref(), Some("redis://127.0.0.1:6379"));
        assert_eq!(c.p2p.listen, vec!["/ip4/127.0.0.1/tcp/0".to_string()]);
        assert_eq!(c.p2p.bootstrap, vec!["/ip4/127.0.0.1/tcp/4001".to_string()]);
        assert!(!c.p2p.mdns && c.p2p.enabled);
    }

    #[test]
    fn bad_config_file_is_reported() {
        let args = ServeArgs { config: Some(PathBuf::from("/nonexistent/node.toml")), ..ServeArgs::default() };
        assert!(matches!(args.into_config(), Err(crate::Error::Config { .. })));
    }
}
