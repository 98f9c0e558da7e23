//! # mlbridge-node
//!
//! The ML Bridge node daemon as a library (the `mlbridge-node` binary is a thin wrapper, and validators reuse the
//! inference code through this crate rather than copying it).
//!
//! ## Bird's-eye view
//! - [`inference`]: the model repository (`models/<name>/<version>/{model.onnx, config.toml}`), ONNX Runtime loaded
//!   from the PyPI wheel at run time, sha256 verification (the model id), signature checks and a blocking `run` that
//!   validates every request first.
//!   On top: [`inference::Engine`] — one dynamic batcher thread per model (bounded queue, "overloaded" when full),
//!   the result cache (memory or Redis) and WordPiece tokenization for embedding models.
//! - [`api`]: the KServe v2 REST API and OpenAI-compatible `/v1/embeddings` (axum), `/metrics` on its own port.
//! - [`metrics`]: Prometheus metrics (requests, latency, queue depth, batch size, cache, load time, process).
//! - [`config`] + [`cli`]: TOML config overridden by flags/env; `serve` and `models` commands; [`operator`]:
//!   `register`, `status`, `redeem --now`.
//! - [`p2p`]: the libp2p swarm actor and the multiplexed inference streams: serves inference/embedding requests from
//!   peers through the engine, publishes signed adverts and receipt batches, bids on gossiped job offers, bans
//!   misbehaving peers.
//! - [`server`]: starts the engine, the listeners and the swarm; ctrl-c/SIGTERM drain queues and stop gracefully.
//!
//! Tasks: the tokio runtime runs the HTTP servers and the swarm task (one owner of the `Swarm`, driven by a
//! `select!` loop, talked to through a cloneable handle); each model's ONNX Runtime session lives on its own OS
//! thread.
//! - [`payment`]: voucher and credit checks before any work, the durable `sled` ledger, receipts signed per batch,
//!   audit records for validators, the chain watcher and batched settlement (`redeemMany`) tracked to N
//!   confirmations.
//! - [`system`]: CPU per core, memory and network metrics beside the node's own.
//! - [`doctor`]: reads a node's metrics and names each symptom's likely cause and fix.

pub mod api;
pub mod cli;
pub mod config;
pub mod doctor;
pub mod error;
pub mod generate;
pub mod inference;
pub mod metrics;
pub mod operator;
pub mod p2p;
pub mod payment;
pub mod server;
pub mod system;

pub use error::{Error, Result};
