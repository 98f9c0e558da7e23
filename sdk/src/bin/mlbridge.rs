//! `mlbridge`: the client command line.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use libp2p::Multiaddr;
use mlbridge_sdk::client::{Client, ClientConfig, Strategy};
use mlbridge_sdk::net::NetConfig;
use mlbridge_sdk::{ModelId, Tensor, TensorData};

/// ML Bridge client: pay for and run inference on the ML Bridge network.
#[derive(Debug, Parser)]
#[command(name = "mlbridge", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Discover nodes and print their models, prices and queues.
    Nodes(NetArgs),
    /// Run an inference over the network: texts for embedding models, or a JSON file of tensors.
    Infer(InferArgs),
    /// Print the model id (sha256 of the ONNX bytes) of model files, as receipts and prices name them.
    ModelId {
        /// ONNX model files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Network")]
struct NetArgs {
    /// Bootstrap node multiaddr with /p2p/<id> (repeatable; the node prints its own at start).
    #[arg(long, env = "MLBRIDGE_BOOTSTRAP", value_delimiter = ',')]
    bootstrap: Vec<Multiaddr>,
    /// Also discover nodes on the local network with mDNS.
    #[arg(long)]
    mdns: bool,
    /// Seconds to listen for adverts.
    #[arg(long, default_value_t = 3.0)]
    wait: f64,
}

#[derive(Debug, Args)]
struct InferArgs {
    #[command(flatten)]
    net: NetArgs,
    /// Model name.
    #[arg(long)]
    model: String,
    /// Model version (default: the node's latest).
    #[arg(long)]
    version: Option<u64>,
    /// Texts to embed (text-embedding models).
    #[arg(long, conflicts_with = "input")]
    text: Vec<String>,
    /// JSON file with KServe-v2-style inputs: {"inputs": [{"name", "shape", "datatype", "data"}]}.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Routing strategy.
    #[arg(long, value_enum, default_value = "model-aware")]
    strategy: StrategyArg,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum StrategyArg {
    RoundRobin,
    LeastOutstanding,
    Weighted,
    ModelAware,
}

fn client(net: &NetArgs, strategy: Strategy) -> anyhow::Result<Client> {
    if net.bootstrap.is_empty() && !net.mdns {
        bail!("give --bootstrap <multiaddr of a node> (printed by `mlbridge-node serve`) or --mdns");
    }
    let config = ClientConfig {
        net: NetConfig {
            listen: vec!["/ip4/0.0.0.0/tcp/0".parse()?],
            bootstrap: net.bootstrap.clone(),
            mdns: net.mdns,
            heartbeat: Duration::from_millis(300),
            ..NetConfig::default()
        },
        strategy,
        ..ClientConfig::default()
    };
    Ok(Client::start(config)?)
}

fn read_inputs(path: &PathBuf) -> anyhow::Result<Vec<Tensor>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).context("the input file is not JSON")?;
    let inputs = v["inputs"].as_array().context("the input file needs an \"inputs\" array")?;
    inputs
        .iter()
        .map(|i| {
            let name = i["name"].as_str().context("input without a name")?;
            let shape: Vec<i64> = serde_json::from_value(i["shape"].clone()).context("input shape")?;
            let data = match i["datatype"].as_str().unwrap_or("FP32") {
                "FP32" => TensorData::Fp32(serde_json::from_value(i["data"].clone()).context("FP32 data")?),
                "INT64" => TensorData::Int64(serde_json::from_value(i["data"].clone()).context("INT64 data")?),
                "INT32" => TensorData::Int32(serde_json::from_value(i["data"].clone()).context("INT32 data")?),
                other => bail!("datatype {other} is not supported by this command"),
            };
            Ok(Tensor::new(name, shape, data)?)
        })
        .collect()
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::ModelId { files } => {
            for file in files {
                println!("{}  {}", ModelId::of_file(&file)?, file.display());
            }
        }
        Command::Nodes(net) => {
            let c = client(&net, Strategy::ModelAware)?;
            tokio::time::sleep(Duration::from_secs_f64(net.wait)).await;
            let nodes = c.nodes().await?;
            if nodes.is_empty() {
                bail!("no node adverts seen in {} s; check --bootstrap", net.wait);
            }
            println!(
                "{:<54} {:<44} {:<12} {:>3} {:>22} {:>6}",
                "peer", "operator", "model", "ver", "price (wei)", "queue"
            );
            for n in nodes {
                for m in &n.models {
                    println!(
                        "{:<54} {:<44} {:<12} {:>3} {:>22} {:>6}",
                        n.peer_id.to_string(),
                        n.operator.to_string(),
                        m.name,
                        m.version,
                        m.price_wei.to_string(),
                        m.queue_depth
                    );
                }
            }
        }
        Command::Infer(args) => {
            let strategy = match args.strategy {
                StrategyArg::RoundRobin => Strategy::RoundRobin,
                StrategyArg::LeastOutstanding => Strategy::LeastOutstanding,
                StrategyArg::Weighted => Strategy::WeightedCapacity,
                StrategyArg::ModelAware => Strategy::ModelAware,
            };
            let c = client(&args.net, strategy)?;
            let found = c.wait_for_nodes(&args.model, 1, Duration::from_secs_f64(args.net.wait.max(1.0) * 3.0)).await?;
            if found.is_empty() {
                bail!("no node serving '{}' was seen; check --bootstrap and the model name", args.model);
            }
            let out = if !args.text.is_empty() {
                c.embed(&args.model, args.version, args.text).await?
            } else {
                let path = args.input.context("give --text for embedding models or --input FILE.json")?;
                c.infer(&args.model, args.version, read_inputs(&path)?).await?
            };
            let outputs: Vec<serde_json::Value> = out
                .response
                .outputs
                .iter()
                .map(|t| serde_json::json!({ "name": t.name(), "shape": t.shape(), "datatype": t.datatype(), "data": t.data() }))
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "node": out.node.to_string(),
                    "model_id": out.response.model_id,
                    "outputs": outputs,
                }))?
            );
        }
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run(cli)));
    if let Err(err) = result {
        eprintln!("Error: {err:#}");
        std::process::exit(1);
    }
}
