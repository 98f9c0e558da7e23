//! `mlbridge`: the client command line.

use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use alloy::primitives::utils::{format_ether, parse_ether};
use alloy::primitives::{Address, B256};
use alloy::signers::local::PrivateKeySigner;
use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use libp2p::Multiaddr;
use mlbridge_sdk::chain::Deployment;
use mlbridge_sdk::client::{Client, ClientConfig, Strategy};
use mlbridge_sdk::net::NetConfig;
use mlbridge_sdk::payment::{Payer, PayerConfig, PaymentPolicy, TxProgress};
use mlbridge_sdk::{ModelId, Tensor, TensorData};

mod load;

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
    /// Chat with a text-generation model over the network; the answer prints as it is generated.
    Chat(ChatArgs),
    /// Run a paid workload for a set time (a mix of models, some inputs repeated), with live progress and a report.
    Load(load::LoadArgs),
    /// Payment channels: open, top up, close, withdraw, list.
    #[command(subcommand)]
    Channel(ChannelCommand),
    /// Keys in encrypted Ethereum keystore files: make one, import one, print its address.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Print the model id (sha256 of the ONNX bytes) of model files, as receipts and prices name them.
    ModelId {
        /// ONNX model files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, Args)]
struct ChatArgs {
    /// The message.
    message: String,
    /// The model.
    #[arg(long, default_value = "smollm2-135m")]
    model: String,
    /// Model version (default: the node's latest).
    #[arg(long)]
    version: Option<u64>,
    /// A system message before it.
    #[arg(long)]
    system: Option<String>,
    /// Most tokens of the answer.
    #[arg(long, default_value_t = 256)]
    max_tokens: u32,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.7)]
    temperature: f32,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 0.9)]
    top_p: f32,
    /// Sampling seed (default: the node picks one and it is printed at the end).
    #[arg(long)]
    seed: Option<u64>,
    #[command(flatten)]
    net: NetArgs,
    /// With a payer key the generation is paid per token (a channel opened within --max-spend).
    #[command(flatten)]
    pay: PayArgs,
}

async fn chat(args: ChatArgs) -> anyhow::Result<()> {
    use std::io::Write;

    use mlbridge_sdk::generate::{ChatTurn, GenerateEvent, GeneratePrompt, GenerateRequest};
    let mut c = client(&args.net, Strategy::LeastOutstanding)?;
    if args.pay.key.is_some() || args.pay.keystore.is_some() {
        c = c.with_payer(Arc::new(args.pay.payer().await?));
    }
    let found = c.wait_for_nodes(&args.model, 1, Duration::from_secs_f64(args.net.wait.max(1.0) * 3.0)).await?;
    if found.is_empty() {
        bail!("no node serving '{}' was seen; check --bootstrap and the model name", args.model);
    }
    let mut turns = Vec::new();
    if let Some(system) = args.system {
        turns.push(ChatTurn { role: "system".into(), content: system });
    }
    turns.push(ChatTurn { role: "user".into(), content: args.message });
    let model = mlbridge_sdk::protocol::ModelRef { name: args.model, version: args.version, id: None };
    let request = GenerateRequest {
        max_tokens: Some(args.max_tokens),
        temperature: args.temperature,
        top_p: args.top_p,
        // Our own seed, never the node's choice (a node picking seeds could choose the longest answer to bill).
        seed: Some(args.seed.unwrap_or_else(rand::random)),
        ..GenerateRequest::new(model, GeneratePrompt::Chat(turns))
    };
    let (node, mut events) = c.generate(request).await?;
    let mut out = std::io::stdout();
    while let Some(event) = events.recv().await {
        match event {
            GenerateEvent::Text(t) => {
                // A node's text is untrusted: no terminal control sequences.
                let t: String = t.chars().filter(|c| !c.is_control() || *c == '\n' || *c == '\t').collect();
                print!("{t}");
                out.flush()?;
            }
            GenerateEvent::Done(d) => {
                println!();
                eprintln!(
                    "({} prompt + {} output tokens, finished by {}, seed {}, node {node}{})",
                    d.prompt_tokens,
                    d.output.len(),
                    d.finish,
                    d.seed,
                    d.receipt.as_ref().map(|r| format!(", paid {} wei", r.price)).unwrap_or_default()
                );
                return Ok(());
            }
            GenerateEvent::Error(e) => bail!("node {node} answered {:?}: {}", e.kind, e.message),
        }
    }
    bail!("the generation stream from {node} ended before its end")
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Make a new random key in an encrypted keystore file (never overwritten) and print its address.
    New(KeyFile),
    /// Encrypt an existing private key into a keystore file. The key is read from standard input (or typed at a
    /// hidden prompt), never from the command line.
    Import(KeyFile),
    /// Print the address of a keystore's key (decrypting it: the password is needed).
    Address(KeyFile),
}

#[derive(Debug, Args)]
struct KeyFile {
    /// The keystore file.
    keystore: PathBuf,
    /// A file whose first line is the password; else $MLBRIDGE_KEYSTORE_PASSWORD, else a prompt.
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
}

fn key(cmd: KeyCommand) -> anyhow::Result<()> {
    use mlbridge_sdk::keys::{self, PasswordSource};
    let source = |f: &KeyFile| PasswordSource::from_file(f.password_file.as_deref());
    match cmd {
        KeyCommand::New(f) => {
            let password = source(&f).read(&f.keystore.display().to_string(), true)?;
            let signer = keys::create(&f.keystore, &password)?;
            println!("{}", signer.address());
            eprintln!("key written to {} (keep the file and its password; both are needed)", f.keystore.display());
        }
        KeyCommand::Import(f) => {
            use std::io::IsTerminal;
            let hex = if std::io::stdin().is_terminal() {
                rpassword::prompt_password("Private key (hex): ").context("reading the key")?
            } else {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line).context("reading the key from standard input")?;
                line
            };
            let password = source(&f).read(&f.keystore.display().to_string(), true)?;
            let signer = keys::import(&f.keystore, &hex, &password)?;
            println!("{}", signer.address());
        }
        // Decrypted, never the address the file merely states (an edited file could name another).
        KeyCommand::Address(f) => println!("{}", keys::load(&f.keystore, &source(&f))?.address()),
    }
    Ok(())
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

#[derive(Debug, Subcommand)]
enum ChannelCommand {
    /// Open a channel to a node operator (waits for the confirmations).
    Open {
        #[command(flatten)]
        pay: PayArgs,
        /// The node operator to pay (from `mlbridge nodes`).
        #[arg(long)]
        payee: Address,
        /// Deposit in ETH (e.g. 0.01).
        #[arg(long)]
        deposit: String,
        /// Hours until the channel can no longer be redeemed.
        #[arg(long, default_value_t = 24 * 7)]
        expiry_hours: u64,
    },
    /// Add ETH to a channel.
    TopUp {
        #[command(flatten)]
        pay: PayArgs,
        /// The channel id.
        channel: B256,
        /// Amount in ETH.
        #[arg(long)]
        amount: String,
    },
    /// Start closing a channel; the node keeps the challenge window to redeem, then `withdraw` returns the rest.
    Close {
        #[command(flatten)]
        pay: PayArgs,
        /// The channel id.
        channel: B256,
    },
    /// Take back what the node did not redeem, after the close window or expiry.
    Withdraw {
        #[command(flatten)]
        pay: PayArgs,
        /// The channel id.
        channel: B256,
    },
    /// List this payer's channels (refreshed from the chain).
    List {
        #[command(flatten)]
        pay: PayArgs,
    },
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Payment")]
struct PayArgs {
    /// Payer key in an encrypted keystore file (`mlbridge key new`).
    #[arg(long, env = "MLBRIDGE_KEYSTORE", value_name = "FILE")]
    keystore: Option<PathBuf>,
    /// The keystore's password file (first line); else $MLBRIDGE_KEYSTORE_PASSWORD, else a prompt.
    #[arg(long, env = "MLBRIDGE_PASSWORD_FILE", value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Payer private key (hex), for devnets only (anvil's well-known keys); use --keystore.
    #[arg(long = "key", env = "MLBRIDGE_KEY", hide_env_values = true)]
    key: Option<String>,
    /// Chain RPC URL.
    #[arg(long, env = "MLBRIDGE_RPC_URL", default_value = "http://127.0.0.1:8545")]
    rpc_url: String,
    /// The contracts' addresses file.
    #[arg(long, env = "MLBRIDGE_DEPLOYMENT", default_value = "contracts/deployments/31337.json")]
    deployment: PathBuf,
    /// Where the payer keeps its channels and signed amounts.
    #[arg(long, env = "MLBRIDGE_STORE", default_value = "data/payer")]
    store: PathBuf,
    /// Most ETH `infer` may deposit by itself (opening or topping up channels).
    #[arg(long, default_value = "0")]
    max_spend: String,
    /// Deposit of each automatic open or top-up, ETH.
    #[arg(long, default_value = "0.01")]
    auto_deposit: String,
}

impl PayArgs {
    async fn payer(&self) -> anyhow::Result<Payer> {
        let signer: PrivateKeySigner = match (&self.keystore, &self.key) {
            (Some(path), _) => mlbridge_sdk::keys::load(
                path,
                &mlbridge_sdk::keys::PasswordSource::from_file(self.password_file.as_deref()),
            )?,
            // The parser's message could quote part of the key: not passed on.
            (None, Some(key)) => key.trim().parse().map_err(|_| anyhow::anyhow!("--key is not a hex private key"))?,
            (None, None) => bail!("give the payer key with --keystore FILE (or --key on a devnet)"),
        };
        let config = PayerConfig {
            rpc_url: self.rpc_url.clone(),
            deployment: Deployment::load(&self.deployment)?,
            store: self.store.clone(),
            policy: PaymentPolicy {
                max_spend: parse_ether(&self.max_spend).context("--max-spend is not an ETH amount")?,
                deposit: parse_ether(&self.auto_deposit).context("--auto-deposit is not an ETH amount")?,
                ..PaymentPolicy::default()
            },
            confirmations: 3,
            poll_interval: Duration::from_millis(250),
        };
        Ok(Payer::connect(signer, config).await?)
    }
}

/// A progress bar that follows a channel transaction to its confirmations.
fn tx_bar(what: &str) -> (ProgressBar, impl FnMut(TxProgress) + Send) {
    let bar = ProgressBar::new(3);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:20}] {pos}/{len} confirmations")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar.set_message(format!("{what}: sending"));
    let (b, what) = (bar.clone(), what.to_owned());
    let update = move |p: TxProgress| match p {
        TxProgress::Sent(hash) => b.set_message(format!("{what}: {hash} sent")),
        TxProgress::Pending => {
            b.set_position(0);
            b.set_message(format!("{what}: pending"));
        }
        TxProgress::Confirmations { block, have, need } => {
            b.set_length(need);
            b.set_position(have);
            b.set_message(format!("{what}: in block {block}"));
        }
        TxProgress::Confirmed { block } => {
            b.set_position(b.length().unwrap_or(3));
            b.set_message(format!("{what}: confirmed in block {block}"));
        }
    };
    (bar, update)
}

async fn channel(cmd: ChannelCommand) -> anyhow::Result<()> {
    match cmd {
        ChannelCommand::Open { pay, payee, deposit, expiry_hours } => {
            let payer = pay.payer().await?;
            let deposit = parse_ether(&deposit).context("--deposit is not an ETH amount")?;
            let expiry =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() + expiry_hours * 3600;
            let (bar, mut progress) = tx_bar("open");
            let rec = payer.open_channel(payee, deposit, expiry, &mut progress).await;
            bar.finish();
            let rec = rec?;
            println!(
                "channel {} to {} with {} ETH, redeemable until unix {}",
                rec.channel_id,
                payee,
                format_ether(deposit),
                expiry
            );
        }
        ChannelCommand::TopUp { pay, channel, amount } => {
            let payer = pay.payer().await?;
            let amount = parse_ether(&amount).context("--amount is not an ETH amount")?;
            let (bar, mut progress) = tx_bar("top-up");
            let rec = payer.top_up(channel, amount, &mut progress).await;
            bar.finish();
            println!("channel {channel} now holds {} ETH", format_ether(rec?.deposit));
        }
        ChannelCommand::Close { pay, channel } => {
            let payer = pay.payer().await?;
            let (bar, mut progress) = tx_bar("close");
            let rec = payer.close(channel, &mut progress).await;
            bar.finish();
            println!(
                "channel {channel} closes at unix {}; then run `mlbridge channel withdraw {channel}`",
                rec?.closes_at
            );
        }
        ChannelCommand::Withdraw { pay, channel } => {
            let payer = pay.payer().await?;
            let (bar, mut progress) = tx_bar("withdraw");
            let refund = payer.withdraw(channel, &mut progress).await;
            bar.finish();
            println!("withdrew {} ETH from channel {channel}", format_ether(refund?));
        }
        ChannelCommand::List { pay } => {
            let payer = pay.payer().await?;
            println!(
                "{:<66} {:<42} {:>14} {:>14} {:>12} status",
                "channel", "payee", "deposit ETH", "signed ETH", "expiry"
            );
            for rec in payer.store().list() {
                let rec = payer.refresh(rec.channel_id).await.unwrap_or(rec);
                let status = if rec.withdrawn {
                    "withdrawn".to_string()
                } else if rec.closes_at != 0 {
                    format!("closing until {}", rec.closes_at)
                } else {
                    "open".to_string()
                };
                println!(
                    "{:<66} {:<42} {:>14} {:>14} {:>12} {status}",
                    rec.channel_id.to_string(),
                    rec.payee.to_string(),
                    format_ether(rec.deposit),
                    format_ether(rec.signed),
                    rec.expiry
                );
            }
        }
    }
    Ok(())
}

#[derive(Debug, Args)]
struct InferArgs {
    #[command(flatten)]
    net: NetArgs,
    #[command(flatten)]
    pay: PayArgs,
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
    #[arg(long, conflicts_with = "image")]
    input: Option<PathBuf>,
    /// An image (JPEG or PNG) for an image classifier: its top classes are printed.
    #[arg(long, conflicts_with = "text")]
    image: Option<PathBuf>,
    /// Classes printed for --image.
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// Routing strategy.
    #[arg(long, value_enum, default_value = "model-aware")]
    strategy: StrategyArg,
    /// Run the job this many times (each paid and receipted); the last answer is printed.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    repeat: u32,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum StrategyArg {
    RoundRobin,
    LeastOutstanding,
    Weighted,
    ModelAware,
}

impl From<StrategyArg> for Strategy {
    fn from(s: StrategyArg) -> Self {
        match s {
            StrategyArg::RoundRobin => Strategy::RoundRobin,
            StrategyArg::LeastOutstanding => Strategy::LeastOutstanding,
            StrategyArg::Weighted => Strategy::Weighted,
            StrategyArg::ModelAware => Strategy::ModelAware,
        }
    }
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
        Command::Channel(cmd) => channel(cmd).await?,
        Command::Key(cmd) => key(cmd)?,
        Command::Load(args) => load::run(args).await?,
        Command::Chat(args) => chat(args).await?,
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
            let mut c = client(&args.net, args.strategy.into())?;
            // With a payer key every job is paid (channels opened within --max-spend); without one only free nodes
            // answer.
            if args.pay.key.is_some() || args.pay.keystore.is_some() {
                c = c.with_payer(Arc::new(args.pay.payer().await?));
            }
            let found = c.wait_for_nodes(&args.model, 1, Duration::from_secs_f64(args.net.wait.max(1.0) * 3.0)).await?;
            if found.is_empty() {
                bail!("no node serving '{}' was seen; check --bootstrap and the model name", args.model);
            }
            let inputs = match (&args.input, &args.image) {
                (Some(path), _) if args.text.is_empty() => Some(read_inputs(path)?),
                (_, Some(path)) => {
                    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                    Some(vec![mlbridge_sdk::protocol::image_tensor(bytes)])
                }
                _ if !args.text.is_empty() => None,
                _ => bail!("give --text for embedding models, --image FILE for image classifiers or --input FILE.json"),
            };
            let mut last = None;
            for _ in 0..args.repeat {
                last = Some(match &inputs {
                    None => c.embed(&args.model, args.version, args.text.clone()).await?,
                    Some(inputs) => c.infer(&args.model, args.version, inputs.clone()).await?,
                });
            }
            let out = last.context("--repeat is at least 1")?;
            if args.repeat > 1 {
                eprintln!("{} jobs answered", args.repeat);
            }
            // An image's answer is its top classes; other answers are their tensors.
            let outputs: Vec<serde_json::Value> = match &args.image {
                Some(_) => out.top_classes(args.top_k).iter().map(|c| serde_json::json!(c)).collect(),
                None => out
                    .response
                    .outputs
                    .iter()
                    .map(|t| serde_json::json!({ "name": t.name(), "shape": t.shape(), "datatype": t.datatype(), "data": t.data() }))
                    .collect(),
            };
            let receipt = out.response.receipt.as_ref().map(|r| {
                serde_json::json!({
                    "job_id": r.job_id, "price_wei": r.price.to_string(), "units": r.units.to_string(),
                    "node": r.node(), "channel_id": r.channel_id, "issued_at": r.issued_at,
                    "input_hash": r.input_hash, "output_hash": r.output_hash, "proof": r.proof,
                    "batch_root": r.batch.root, "batch_count": r.batch.count,
                    "batch_signature": format!("0x{}", hex::encode(r.batch.signature)),
                })
            });
            let paid = out.paid.as_ref().map(|p| {
                serde_json::json!({
                    "channel": p.channel_id, "price_wei": p.price.to_string(),
                    "signed_wei": c.payer().and_then(|x| x.store().get(&p.channel_id)).map(|c| c.signed.to_string()),
                    // Null when the job drew on credit paid ahead by an earlier voucher.
                    "voucher_cumulative_wei": p.voucher.as_ref().map(|v| v.cumulative_amount.to_string()),
                })
            });
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "node": out.node.to_string(),
                    "model_id": out.response.model_id,
                    (if args.image.is_some() { "classes" } else { "outputs" }): outputs,
                    "receipt": receipt,
                    "paid": paid,
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
