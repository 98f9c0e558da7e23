//! `mlbridge-node`: parse arguments, set up logging, run.

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// mimalloc: requests make many small allocations on several threads, where glibc's allocator contends.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = mlbridge_node::cli::Cli::parse();
    // The daemon logs its life at info; one-shot commands only warnings (RUST_LOG overrides both).
    let default = if matches!(cli.command, mlbridge_node::cli::Command::Serve(_)) { "info" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)))
        .with_writer(std::io::stderr)
        .init();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(mlbridge_node::cli::run(cli)).map_err(|e| e.to_string()));
    if let Err(err) = result {
        eprintln!("Error: {err}");
        std::process::exit(1);
    }
}
