//! # mlbridge-validator
//!
//! The validator process (DESIGN.md §1, §4, §9). It stakes in `Staking`, follows the receipts nodes gossip on
//! `mlbridge/receipts/1`, and checks a share of them that nodes cannot predict:
//!
//! 1. **Admit** ([`daemon`]): the receipt's proof and batch signature verify, the batch's node is registered in
//!    `Staking` under the PeerId that published it, the receipt is recent, and this validator holds its model.
//! 2. **Sample** ([`sampler`]): `keccak256(secret ‖ leaf)` below the node's rate (default 5%, more for new and
//!    suspected nodes).
//! 3. **Audit**: fetch the job's record (inputs, outputs, signed receipt) from the node over the audit protocol,
//!    with a request signed by the validator key; nodes serve only active validators.
//! 4. **Re-execute** ([`reexec`]): run the job alone with the node's own inference code (`mlbridge-node` as a
//!    library) and compare within the model's `[validation] max_abs_diff` ([`compare`]); [`tolerance`] measures
//!    how far batching moves outputs, which the tolerances must cover.
//! 5. **Attest** once per epoch (`ValidatorRewards.attest`) with a Merkle root over the checked jobs ([`checks`];
//!    the leaves are kept on disk), which earns a stake-weighted share of the epoch's fees; **claim** them.
//! 6. **Dispute** a mismatch: commit, reveal with a bond, gossip the evidence on `mlbridge/disputes/1`; **vote** on
//!    others' disputes after re-executing their evidence (or the node's own record); **resolve** after the deadline
//!    and claim the winnings.
//!
//! Text generations are checked with one teacher-forced forward pass ([`generation`]).
//!
//! Every transaction is tracked to N confirmations ([`chain`]). Metrics are on `/metrics` ([`metrics`]); the
//! command line is in [`cli`].

pub mod chain;
pub mod checks;
pub mod cli;
pub mod compare;
pub mod config;
pub mod daemon;
mod error;
pub mod generation;
pub mod keys;
pub mod metrics;
pub mod reexec;
pub mod sampler;
pub mod tolerance;

pub use daemon::{RunningValidator, run, start};
pub use error::{Error, Result};
