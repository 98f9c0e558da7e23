//! `mlbridge-node`: parse arguments, set up logging, run.

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() {
    let cli = mlbridge_node::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")))
        .with_writer(std::io::stderr)
        .init();
    if let Err(err) = mlbridge_node::cli::run(cli) {
        eprintln!("Error: {err}");
        std::process::exit(1);
    }
}
