//! # mlbridge-sdk
//!
//! Everything a program needs to speak the ML Bridge protocol. Nodes (`mlbridge-node`) and validators
//! (`mlbridge-validator`) build on this crate, so the shared vocabulary lives here exactly once.
//!
//! Today it holds:
//! - [`tensor`]: named tensors shaped like the KServe v2 / Open Inference Protocol (`name`, `datatype`, `shape`,
//!   `data`), with validation of element counts against shapes.
//! - [`model`]: [`ModelId`], the sha256 of a model's ONNX bytes. Receipts, prices and disputes name models by it,
//!   so everybody agrees on exactly which weights ran.
//!
//! - [`voucher`] and [`receipt`]: the EIP-712 `Voucher` (signed by payers) and `Receipt` (signed by nodes) in the
//!   [`eip712`] domain, matching the contracts bit for bit.
//! - [`chain`]: contract bindings from the committed artifacts, deployments, a transaction sender (nonces, capped
//!   EIP-1559 fees, bumps) and the confirmation tracker (depth 3, reorg detection and resubmission).
//!
//! - [`protocol`]: versioned protocol and topic names and the CBOR messages (inference, embeddings, bids, adverts,
//!   job offers, receipts) with size limits checked before decoding.
//! - [`net`]: the libp2p behaviour and swarm builder every peer uses, and the multiplexed inference stream
//!   ([`net::mux`]: one long-lived stream per client and node, requests framed with ids).
//! - [`client`]: the network client: node discovery from signed adverts, routing strategies, failover, the open
//!   market (gossiped job offers and bids), paying every job (from credit paid ahead, or with a voucher) and
//!   verifying its receipt (each batch signature once) when given a payer.
//! - [`payment`]: the payer: channels (open, top up, close, withdraw), the durable voucher store, vouchers paying
//!   ahead for a credit window (payment intervals) and automatic funding within a spending limit.

pub mod chain;
pub mod client;
pub mod eip712;
pub mod error;
pub mod generate;
pub mod keys;
pub mod model;
pub mod net;
pub mod payment;
pub mod protocol;
pub mod receipt;
pub mod signer;
pub mod tensor;
pub mod voucher;

pub use error::{Error, Result};
pub use model::ModelId;
pub use tensor::{DataType, Tensor, TensorData};
