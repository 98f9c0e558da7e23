//! `mlbridge-bench`: benchmarks that print tables (run through `scripts/bench inference`).
//!
//! Every load loop is bounded in time and in requests, and talks to 127.0.0.1 only.

mod generate;
mod load;
mod paid;
mod scenarios;
mod target;

use std::path::PathBuf;

use clap::Parser;

/// mimalloc: requests make many small allocations on several threads, where glibc's allocator contends.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Benchmarks of the node's inference paths.
#[derive(Debug, Parser)]
#[command(name = "mlbridge-bench", version, about)]
struct Cli {
    /// What to measure.
    #[arg(value_enum, default_value = "inference")]
    suite: Suite,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Most requests per measurement.
    #[arg(long, default_value_t = 200_000)]
    max_requests: usize,
    /// Model repository.
    #[arg(long, default_value = "models")]
    model_repository: PathBuf,
    /// The node binary, for the cold-start measurement.
    #[arg(long, default_value = "target/release/mlbridge-node")]
    node_bin: PathBuf,
    /// Only these models (paid benchmark; default: mlp-tiny and minilm-l6).
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
    /// Measurements per row, alternating free and paid (paid benchmark); the row shows the median.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Paid benchmark: run each node as a separate process pinned to core 0 (`taskset`); run the benchmark itself
    /// pinned to another core (scripts/bench does).
    #[arg(long)]
    split: bool,
    /// Paid benchmark: only these concurrencies (default 1, 16 and 64).
    #[arg(long, value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// The anvil binary, for the paid benchmark.
    #[arg(long, default_value = "node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil")]
    anvil: PathBuf,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Suite {
    /// Raw ONNX Runtime vs engine vs HTTP, batching, cache, cold start.
    Inference,
    /// libp2p request-response vs HTTP vs raw ONNX Runtime.
    P2p,
    /// Paid vs free over libp2p, and settlement gas per inference.
    Paid,
    /// Text generation over HTTP against a plain greedy loop: time to first token, decoding speed, streams.
    Generate,
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let limits = load::Limits { seconds: cli.seconds, max_requests: cli.max_requests };
    let result = match cli.suite {
        Suite::Inference => rt.block_on(scenarios::inference(&cli.model_repository, &cli.node_bin, limits)),
        Suite::P2p => rt.block_on(scenarios::p2p(&cli.model_repository, limits)),
        Suite::Generate => rt.block_on(generate::generate(&cli.model_repository)),
        Suite::Paid => rt.block_on(paid::paid(paid::PaidBench {
            repo: &cli.model_repository,
            anvil: &cli.anvil,
            models: &cli.models,
            repeats: cli.repeats.max(1),
            limits,
            split: cli.split.then_some(cli.node_bin.as_path()),
            concurrency: if cli.concurrency.is_empty() { vec![1, 16, 64] } else { cli.concurrency.clone() },
        })),
    };
    if let Err(err) = result {
        eprintln!("Error: {err:?}");
        std::process::exit(1);
    }
}
