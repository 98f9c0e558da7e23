//! The command line: `stake`, `unbond`, `withdraw`, `status`, `claim`, `run`, `tolerance`.

use std::path::PathBuf;

use alloy::primitives::U256;
use alloy::primitives::utils::{format_ether, parse_ether};
use clap::{Args, Parser, Subcommand};

use crate::chain::{ValidatorChain, rpc};
use crate::config::ValidatorConfig;
use crate::{Error, Result};

/// ML Bridge validator: stake, sample receipts, re-execute jobs, attest, dispute, vote and claim.
#[derive(Debug, Parser)]
#[command(name = "mlbridge-validator", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Register as a validator with a stake, or add to it.
    Stake {
        /// ETH to stake (default: the contract's minimum for a new validator).
        #[arg(long)]
        amount: Option<String>,
        /// Keys, chain, models and network.
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Start unbonding stake (it can be withdrawn after the unbonding delay; it stops earning at once).
    Unbond {
        /// ETH to unbond.
        #[arg(long)]
        amount: String,
        /// Keys, chain, models and network.
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Withdraw unbonded stake whose delay has passed.
    Withdraw {
        /// Keys, chain, models and network.
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Print the validator's on-chain state (and the running validator's counters, if it is running).
    Status {
        /// Keys, chain, models and network.
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Claim rewards of finished epochs and withdraw dispute credits.
    Claim {
        /// Keys, chain, models and network.
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Run the validator's duties until ctrl-c.
    Run {
        /// Keys, chain, models and network.
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Measure, per model, the worst deviation between a job run inside a full batch (as a node runs it) and
    /// alone (as a validator re-executes it), next to the model's configured tolerance.
    Tolerance {
        /// Samples per measured batch (default: each model's max batch size).
        #[arg(long)]
        batch: Option<usize>,
        /// Batches measured per model.
        #[arg(long, default_value_t = 4)]
        rounds: usize,
        /// Keys, chain, models and network.
        #[command(flatten)]
        common: CommonArgs,
    },
}

/// Settings shared by every subcommand (a `--config` file, flags on top).
#[derive(Debug, Clone, Default, Args)]
pub struct CommonArgs {
    /// The validator's TOML config file.
    #[arg(long, env = "MLBRIDGE_VALIDATOR_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Validator key in hex (devnets only; prefer --keystore).
    #[arg(long, env = "MLBRIDGE_VALIDATOR_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// Encrypted Ethereum keystore file holding the validator key.
    #[arg(long, env = "MLBRIDGE_KEYSTORE")]
    pub keystore: Option<PathBuf>,
    /// File with the keystore's password (else $MLBRIDGE_KEYSTORE_PASSWORD).
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// Chain RPC URL.
    #[arg(long, env = "MLBRIDGE_RPC_URL")]
    pub rpc_url: Option<String>,
    /// The contracts' addresses file.
    #[arg(long, env = "MLBRIDGE_DEPLOYMENT")]
    pub deployment: Option<PathBuf>,
    /// Model repository.
    #[arg(long)]
    pub model_repository: Option<PathBuf>,
    /// Data folder (sampling secret, attestation leaves).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Metrics listen address.
    #[arg(long)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// p2p listen multiaddr (repeatable).
    #[arg(long)]
    pub listen: Vec<String>,
    /// Bootstrap peer multiaddr with /p2p/<id> (repeatable).
    #[arg(long)]
    pub bootstrap: Vec<String>,
    /// Share of receipts re-executed (0..1).
    #[arg(long)]
    pub sample_rate: Option<f64>,
}

impl CommonArgs {
    /// The config file with the flags applied.
    pub fn config(&self) -> Result<ValidatorConfig> {
        let mut c = match &self.config {
            Some(p) => ValidatorConfig::load(p)?,
            None => ValidatorConfig::default(),
        };
        if self.key.is_some() {
            c.key.clone_from(&self.key);
        }
        if self.keystore.is_some() {
            c.keystore.clone_from(&self.keystore);
        }
        if self.password_file.is_some() {
            c.password_file.clone_from(&self.password_file);
        }
        if let Some(u) = &self.rpc_url {
            c.rpc_url.clone_from(u);
        }
        if self.deployment.is_some() {
            c.deployment.clone_from(&self.deployment);
        }
        if let Some(m) = &self.model_repository {
            c.model_repository.clone_from(m);
        }
        if let Some(d) = &self.data_dir {
            c.data_dir.clone_from(d);
        }
        if self.metrics_listen.is_some() {
            c.metrics.listen = self.metrics_listen;
        }
        if !self.listen.is_empty() {
            c.p2p.listen.clone_from(&self.listen);
        }
        if !self.bootstrap.is_empty() {
            c.p2p.bootstrap.clone_from(&self.bootstrap);
        }
        if let Some(r) = self.sample_rate {
            c.sampling.rate = r;
        }
        c.check().map_err(|reason| Error::Config { path: "flags".into(), reason })?;
        Ok(c)
    }
}

async fn connect(common: &CommonArgs) -> Result<(ValidatorConfig, ValidatorChain)> {
    let c = common.config()?;
    let signer = crate::keys::load(&c)?;
    let chain = ValidatorChain::connect(&c, signer, true).await?;
    Ok((c, chain))
}

fn ether(s: &str, what: &str) -> Result<U256> {
    parse_ether(s).map_err(|e| Error::Config { path: what.into(), reason: format!("'{s}' is not an ETH amount: {e}") })
}

/// Run a parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Stake { amount, common } => {
            let (_, chain) = connect(&common).await?;
            // IStaking.Role: 0 none, 1 node, 2 validator.
            let role = chain.staking.roleOf(chain.address()).call().await.map_err(rpc)?;
            if role == 1 {
                return Err(Error::Config {
                    path: "--keystore / --key".into(),
                    reason: format!(
                        "{} is registered as a node operator; a validator needs a key of its own",
                        chain.address()
                    ),
                });
            }
            let registered = role == 2;
            let amount = match amount {
                Some(a) => ether(&a, "--amount")?,
                None if registered => {
                    return Err(Error::Config { path: "--amount".into(), reason: "say how much to add".into() });
                }
                None => chain.staking.MIN_VALIDATOR_STAKE().call().await.map_err(rpc)?,
            };
            let tx = if registered {
                chain.staking.increaseStake().value(amount).into_transaction_request()
            } else {
                chain.staking.registerValidator().value(amount).into_transaction_request()
            };
            chain.transact(if registered { "increase stake" } else { "register validator" }, tx).await?;
            println!("staked {} ETH as validator {}", format_ether(amount), chain.address());
            print_status(&chain, None).await
        }
        Command::Unbond { amount, common } => {
            let (_, chain) = connect(&common).await?;
            let amount = ether(&amount, "--amount")?;
            chain.transact("unbond", chain.staking.requestUnbond(amount).into_transaction_request()).await?;
            print_status(&chain, None).await
        }
        Command::Withdraw { common } => {
            let (_, chain) = connect(&common).await?;
            chain.transact("withdraw", chain.staking.withdraw().into_transaction_request()).await?;
            print_status(&chain, None).await
        }
        Command::Claim { common } => {
            let (c, chain) = connect(&common).await?;
            let me = chain.address();
            let mut claimed = false;
            if !chain.rewards.unclaimedEpochs(me).call().await.map_err(rpc)?.is_zero() {
                let max = U256::from(c.duties.claim_max_epochs);
                chain.transact("claim", chain.rewards.claim(max).into_transaction_request()).await?;
                claimed = true;
            }
            if !chain.disputes.creditOf(me).call().await.map_err(rpc)?.is_zero() {
                chain.transact("withdraw dispute credit", chain.disputes.withdraw().into_transaction_request()).await?;
                claimed = true;
            }
            if !claimed {
                println!("nothing to claim");
            }
            print_status(&chain, None).await
        }
        Command::Status { common } => {
            let (c, chain) = connect(&common).await?;
            print_status(&chain, c.metrics.listen).await
        }
        Command::Run { common } => crate::daemon::run(common.config()?).await,
        Command::Tolerance { batch, rounds, common } => {
            crate::tolerance::report(&common.config()?, batch, rounds).await
        }
    }
}

async fn print_status(chain: &ValidatorChain, metrics: Option<std::net::SocketAddr>) -> Result<()> {
    let s = chain.status().await?;
    println!("validator  {}{}", s.address, if s.active { " (active)" } else { " (not active)" });
    println!("stake      {} ETH ({:.2}% of all validator stake)", format_ether(s.stake), s.share_bps as f64 / 100.0);
    if !s.unbonding.0.is_zero() {
        println!("unbonding  {} ETH, withdrawable at unix time {}", format_ether(s.unbonding.0), s.unbonding.1);
    }
    println!("epoch      {} ({})", s.epoch, if s.attested { "attested" } else { "not attested yet" });
    println!(
        "rewards    {} ETH claimable, {} ETH earned in total",
        format_ether(s.pending_rewards),
        format_ether(s.earned)
    );
    println!("disputes   {} ETH credit withdrawable", format_ether(s.credit));
    println!("balance    {} ETH", format_ether(s.balance));
    if let Some(addr) = metrics
        && let Ok(resp) = reqwest::get(format!("http://{addr}/metrics")).await
        && let Ok(text) = resp.text().await
    {
        println!("running validator ({addr}):");
        for line in text.lines().filter(|l| l.starts_with("mlbridge_validator_") && !l.contains("_bucket")) {
            println!("  {line}");
        }
    }
    Ok(())
}
