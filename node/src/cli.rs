//! Command-line interface of `mlbridge-node`.

use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};

use crate::Result;
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
    /// Load every model in the repository, verify its sha256, run one inference and print a table.
    Models(InferenceArgs),
}

/// Where models and ONNX Runtime are.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Inference")]
pub struct InferenceArgs {
    /// Model repository folder (`<name>/<version>/{model.onnx,config.toml}`).
    #[arg(long, env = "MLBRIDGE_MODEL_REPOSITORY", default_value = "models")]
    pub model_repository: PathBuf,
    /// ONNX Runtime shared library (default: $ORT_DYLIB_PATH, then the project's .venv).
    #[arg(long, value_name = "PATH")]
    pub onnxruntime: Option<PathBuf>,
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Models(args) => models(&args),
    }
}

fn models(args: &InferenceArgs) -> Result<()> {
    let runtime = OnnxRuntime::init(args.onnxruntime.as_deref())?;
    let repo = ModelRepository::open(&args.model_repository)?;
    println!("ONNX Runtime: {}", runtime.library().display());
    println!("Model repository: {}", repo.root().display());
    println!(
        "{:<16} {:<9} {:<16} {:>8} {:>9} {:>12}  outputs",
        "model", "precision", "model id", "load ms", "infer ms", "price (wei)"
    );
    let mut failures = 0;
    for config in repo.configs() {
        let key = config.key();
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
                    "{:<16} {:<9} {:<16} {:>8.1} {:>9.2} {:>12}  {}",
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
