//! The chain layer: contract bindings, deployments, EIP-1559 transaction sending and confirmation tracking.
//!
//! - [`bindings`]: `sol!` bindings generated from the committed artifacts (`contracts/artifacts/*.json`).
//! - [`ContractRevert`]: our contracts' custom errors decoded into readable, typed errors.
//! - [`Deployment`]: the addresses file, checked against the chain; [`deploy`] deploys the set from the artifacts.
//! - [`TxSender`]: one key's transactions: nonces for concurrent sends, gas margin, capped EIP-1559 fees, bumps.
//! - [`ConfirmationTracker`]: one task per process follows the head, reports `pending -> included(B) -> confirmed`
//!   at depth N (DESIGN.md §6), detects reorgs and re-sends our transactions.
//! - [`ChainMetrics`]: Prometheus metrics of all of the above.

pub mod bindings;
mod deployment;
mod metrics;
mod revert;
mod sender;
mod tracker;

pub use deployment::{DeployParams, Deployment, deploy};
pub use metrics::ChainMetrics;
pub use revert::ContractRevert;
pub use sender::{SenderConfig, SentTx, TxSender};
pub use tracker::{ConfirmationTracker, TrackerConfig, TxEvent, TxState, wait_confirmed};

pub(crate) fn rpc_error(e: impl std::fmt::Display) -> crate::Error {
    crate::Error::Rpc(e.to_string())
}
