//! `mlbridge`: the client command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use mlbridge_sdk::ModelId;

/// ML Bridge client: pay for and run inference on the ML Bridge network.
#[derive(Debug, Parser)]
#[command(name = "mlbridge", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the model id (sha256 of the ONNX bytes) of model files, as receipts and prices name them.
    ModelId {
        /// ONNX model files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::ModelId { files } => {
            for file in files {
                println!("{}  {}", ModelId::of_file(&file)?, file.display());
            }
        }
    }
    Ok(())
}

fn main() {
    if let Err(err) = run(Cli::parse()) {
        eprintln!("Error: {err:?}");
        std::process::exit(1);
    }
}
