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
//! The wire protocol and the routing client join as `protocol` and `client` (see DESIGN.md §2).

pub mod chain;
pub mod eip712;
pub mod error;
pub mod model;
pub mod protocol;
pub mod receipt;
pub mod tensor;
pub mod voucher;

pub use error::{Error, Result};
pub use model::ModelId;
pub use tensor::{DataType, Tensor, TensorData};
