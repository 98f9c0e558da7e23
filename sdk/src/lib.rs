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
//! The wire protocol, EIP-712 vouchers and receipts, contract bindings, the confirmation tracker and the routing
//! client join as `protocol`, `voucher`, `receipt`, `chain` and `client` (see DESIGN.md §2).

pub mod error;
pub mod model;
pub mod tensor;

pub use error::{Error, Result};
pub use model::ModelId;
pub use tensor::{DataType, Tensor, TensorData};
