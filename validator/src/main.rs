//! `mlbridge-validator`: parse arguments and run.

use clap::Parser;

/// ML Bridge validator: stake, sample receipts, re-execute jobs, attest and dispute.
///
/// The validator's network duties arrive with the validator issue; this release provides the command line shell
/// and the comparison rule (`mlbridge_validator::compare`).
#[derive(Debug, Parser)]
#[command(name = "mlbridge-validator", version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    eprintln!(
        "Error: mlbridge-validator has no duties to run yet (sampling, re-execution and attestation arrive with the validator issue); see --help"
    );
    std::process::exit(2);
}
